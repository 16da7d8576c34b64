"""``infoplane distances STORE --out DISTANCES``: the one pass over the activations."""

from __future__ import annotations

import argparse


def register(subparsers: argparse._SubParsersAction) -> None:
    from infoplane.estimate.cluster import add_cluster_arguments

    parser = subparsers.add_parser(
        "distances",
        help="cache the squared distances of every (split, step, layer) of a store",
        description=(
            "Compute the N×N squared distances of every captured (split, step, layer) of an "
            "activation store and write them to a distance cache. One task per (split, step); "
            "a rerun resumes an interrupted cache, skipping the steps already done. A cache "
            "whose store has other steps, layers, probe sizes or attributes (trained again "
            "with other settings) is refused; --overwrite starts it afresh."
        ),
    )
    parser.add_argument("store", help="activation store (activations.zarr)")
    parser.add_argument("--out", required=True, help="distance cache to write (distances.zarr)")
    parser.add_argument(
        "--splits", nargs="+", choices=("train", "test"), help="splits to cache (default: all)"
    )
    parser.add_argument(
        "--overwrite", action="store_true", help="start afresh instead of resuming --out"
    )
    parser.add_argument(
        "--storage",
        choices=("auto", "full", "float32", "recompute"),
        default="auto",
        help=(
            "how the distances of each layer are kept (the experiment's distances.store): "
            "auto (default) - full float64 up to N = 2048, above it float32 or recompute by a "
            "cost model; full; float32 (upper triangle); recompute (not kept)"
        ),
    )
    add_cluster_arguments(parser)
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    from infoplane.estimate.cluster import cluster_options
    from infoplane.estimate.distances import compute_distances

    summary = compute_distances(
        args.store,
        args.out,
        splits=args.splits,
        overwrite=args.overwrite,
        storage=args.storage,
        **cluster_options(args),
    )
    print(
        f"{args.out}: {summary['computed']} steps computed, {summary['skipped']} already done"
        + (f", {len(summary['nonfinite'])} NaN points" if summary["nonfinite"] else "")
    )
    return 0
