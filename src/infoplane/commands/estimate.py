"""``infoplane estimate`` (one run, one preset), ``infoplane stack`` (runs on a run axis) and
``infoplane widths`` (one alignment search kept in a distance cache)."""

from __future__ import annotations

import argparse


def register(subparsers: argparse._SubParsersAction) -> None:
    from infoplane.estimate.cluster import add_cluster_arguments

    parser = subparsers.add_parser(
        "estimate",
        help="entropies and MI of every (split, step, layer) for one estimator preset",
        description=(
            "Estimate I(X;T), I(T;Y), the entropies and the kernel widths of every captured "
            "(split, step, layer) with a named estimator preset. SOURCE is a distance cache "
            "(fast; the activations are not read unless the preset needs them) or an activation "
            "store (distances are computed on the fly and not kept)."
        ),
    )
    parser.add_argument("source", help="distance cache (distances.zarr) or activation store")
    parser.add_argument("--estimator", required=True, help="preset name, e.g. paper")
    parser.add_argument(
        "--config",
        default=None,
        help="YAML or JSON with an estimators: mapping (config.yaml or a file of ad-hoc "
        "presets); looked up before the built-in presets",
    )
    parser.add_argument("--out", required=True, help="result to write (mi/<estimator>.zarr)")
    parser.add_argument(
        "--store",
        default=None,
        help="activation store, for presets that read activations (multivariate, binning) when the "
        "store recorded in the cache has moved",
    )
    parser.add_argument(
        "--splits", nargs="+", choices=("train", "test"), help="splits to estimate (default: all)"
    )
    parser.add_argument(
        "--no-kept-widths",
        dest="keep_widths",
        action="store_false",
        help="search the alignment widths again instead of reusing those an earlier preset "
        "with the same search kept in the distance cache, and keep none",
    )
    parser.add_argument(
        "--device",
        default=None,
        help="where the Grams and spectra are computed: auto (a CUDA GPU when torch sees one, "
        "else numpy on the CPU), cpu, cuda, cuda:N or torch-cpu (default: $INFOPLANE_DEVICE, "
        "else auto)",
    )
    add_cluster_arguments(parser)
    parser.set_defaults(handler=run_estimate)

    stack = subparsers.add_parser(
        "stack",
        help="stack the results of several runs on a run dimension",
        description="Stack per-run results of one estimator preset into one experiment file.",
    )
    stack.add_argument("results", nargs="+", help="per-run results (mi/<estimator>.zarr)")
    stack.add_argument("--out", required=True, help="experiment-level result to write")
    stack.add_argument(
        "--runs", nargs="+", default=None, help="run names (default: each result's run attribute)"
    )
    stack.set_defaults(handler=run_stack)

    widths = subparsers.add_parser(
        "widths",
        help="run one alignment width search and keep its widths in the distance cache",
        description=(
            "Search the alignment widths of every (split, step, layer) of a distance cache with "
            "one grid and keep them in the cache (distances.zarr/widths/), so that every later "
            "preset with this search (e.g. the members of a sensitivity family) reuses them. "
            "Writes a small JSON summary to OUT."
        ),
    )
    widths.add_argument("source", help="distance cache (distances.zarr)")
    widths.add_argument("--grid", choices=("linear", "log"), default="linear")
    widths.add_argument("--points", type=int, default=100, help="grid points (default 100)")
    widths.add_argument("--label-kernel", default="indicator", choices=("indicator",))
    widths.add_argument("--out", required=True, help="JSON summary to write")
    add_cluster_arguments(widths)
    widths.set_defaults(handler=run_widths)


def run_estimate(args: argparse.Namespace) -> int:
    from infoplane.estimate.cluster import cluster_options, read_cluster_config
    from infoplane.estimate.devices import default_device
    from infoplane.estimate.pipeline import estimate
    from infoplane.presets import resolve_preset

    preset = resolve_preset(args.config, args.estimator)
    # a dask: mapping in the --config file is used when --cluster-config is not given
    fallback = read_cluster_config(args.config, dask_key_only=True) if args.config else None
    result = estimate(
        args.source,
        preset,
        name=args.estimator,
        out=args.out,
        store=args.store,
        splits=args.splits,
        keep_widths=args.keep_widths,
        device=args.device or default_device(),  # estimate() checks it before any work
        **cluster_options(args, fallback),
    )
    n_nan = int(result["I_XT"].isnull().sum())
    print(
        f"{args.out}: {args.estimator} on {result.sizes['split']} split(s) × "
        f"{result.sizes['step']} steps × {result.sizes['layer']} layers"
        + (f"; {n_nan} NaN points" if n_nan else "")
    )
    return 0


def run_stack(args: argparse.Namespace) -> int:
    from infoplane.io.files import exclusive
    from infoplane.io.results import stack_runs, write_result

    with exclusive(args.out):
        stacked = stack_runs(args.results, args.runs)
        write_result(stacked, args.out)
    print(f"{args.out}: {stacked.sizes['run']} runs stacked")
    return 0


def run_widths(args: argparse.Namespace) -> int:
    from pathlib import Path

    from infoplane.errors import InputError
    from infoplane.estimate.cluster import cluster_options
    from infoplane.estimate.pipeline import keep_alignment_widths
    from infoplane.io.files import canonical_json, replacing

    if args.points < 2:
        raise InputError(f"--points must be >= 2, got {args.points}")
    summary = keep_alignment_widths(
        args.source,
        grid=args.grid,
        points=args.points,
        label_kernel=args.label_kernel,
        **cluster_options(args, None),
    )
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    with replacing(out) as tmp:
        Path(tmp).write_text(canonical_json(summary) + "\n", encoding="utf-8")
    print(f"{args.source}: alignment widths kept ({canonical_json(summary['search'])})")
    return 0
