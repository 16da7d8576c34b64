"""``infoplane plot``: figures of estimates and training curves."""

from __future__ import annotations

import argparse

DESCRIPTION = """\
Draw the figures of one estimator preset's results and/or the training curves.

With MI (an mi/<preset>.zarr of one run, or an experiment's stacked file), writes to OUT_DIR:
information_plane.png (all layers, train and test side by side), information_plane_train.png and
information_plane_test.png (one panel per layer plus an overview), mi_epoch.png, widths.png,
data_processing.png and data_processing.csv. With --metrics (runs' metrics.csv files), writes
OUT_DIR/training.png (loss and accuracy against epoch). With --compare (the results of several
presets on the same runs), writes OUT_DIR/comparison_train.png and comparison_test.png: per layer,
every preset's trajectory, normalised by its own H(X) and H(Y) (--bits: unnormalised). With
--family (the results of a sensitivity family's members), writes OUT_DIR/family_train.png and
family_test.png: per layer, every member's trajectory, the members of each step joined, and
the band of I(X;T) against epoch they span, in bits.
"""


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "plot",
        help="draw information-plane figures and training curves",
        description=DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("mi", nargs="?", metavar="MI", help="estimates (mi/<preset>.zarr)")
    parser.add_argument(
        "--metrics", nargs="+", metavar="CSV", default=[], help="metrics.csv of each run"
    )
    parser.add_argument(
        "--compare",
        nargs="+",
        metavar="MI",
        default=[],
        help="results of several presets (mi/<preset>.zarr) to draw side by side",
    )
    parser.add_argument(
        "--bits", action="store_true", help="with --compare: plot bits, not MI / H(X), MI / H(Y)"
    )
    parser.add_argument(
        "--family",
        nargs="+",
        metavar="MI",
        default=[],
        help="results of a family's members (mi/<family>.<label>.zarr) drawn as a band",
    )
    parser.add_argument("--out-dir", required=True, metavar="OUT_DIR", help="folder for figures")
    parser.add_argument(
        "--title", default=None, help="title of the training figure; the family's name"
    )
    parser.add_argument(
        "--tol",
        type=float,
        default=1e-6,
        metavar="BITS",
        help="slack of the data-processing comparison, in bits (default 1e-6)",
    )
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    from pathlib import Path

    from infoplane.errors import InputError
    from infoplane.report import plots

    if args.mi is None and not args.metrics and not args.compare and not args.family:
        raise InputError(
            "nothing to plot: give MI (an mi/<preset>.zarr), --metrics CSV ..., --compare MI ... "
            "and/or --family MI ..."
        )
    if args.tol < 0:
        raise InputError(f"--tol must be >= 0 bits, got {args.tol}")
    out_dir = Path(args.out_dir)
    written = []
    if args.mi is not None:
        written += plots.plot_estimates(args.mi, out_dir, tol=args.tol)
    if args.metrics:
        written.append(
            plots.plot_training(args.metrics, out_dir / plots.TRAINING_FIGURE, title=args.title)
        )
    if args.compare:
        written += plots.plot_comparison(args.compare, out_dir, normalise=not args.bits)
    if args.family:
        written += plots.plot_family(args.family, out_dir, family=args.title)
    for path in written:
        print(path)
    return 0
