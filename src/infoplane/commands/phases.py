"""``infoplane phases MI ...``: fitting and compression per layer, with intervals and a verdict."""

from __future__ import annotations

import argparse

DESCRIPTION = """\
Per split and layer of every result (the stacked mi/<preset>.zarr of several presets, e.g. the
members of a sensitivity family): the fitting amount (rise of smoothed I(T;Y) to its maximum) and
the compression amount (drop of smoothed I(X;T) after its maximum), their onsets, and LEVEL
confidence intervals across the seeds (a t-interval, widened by the resampling bounds
I_XT_lo/I_XT_hi and I_TY_lo/I_TY_hi when a result holds them). Compression is significant where
its interval lies above 0. The verdict says, per split and layer, whether it is significant under
every given preset, some or none. Writes one CSV row per (preset, split, layer).
"""


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "phases",
        help="fitting and compression per layer with intervals, and a verdict over presets",
        description=DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("results", nargs="+", metavar="MI", help="results (mi/<preset>.zarr)")
    parser.add_argument("--out", required=True, metavar="CSV", help="the table to write")
    parser.add_argument(
        "--window", type=int, default=3, help="moving-average window over captures (default 3)"
    )
    parser.add_argument(
        "--level", type=float, default=0.9, help="confidence level of the intervals (default 0.9)"
    )
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    from pathlib import Path

    from infoplane.errors import InputError
    from infoplane.io.files import replacing
    from infoplane.report.analysis import phase_table, phase_verdicts, results_by_name

    if not 0.0 < args.level < 1.0:
        raise InputError(f"--level must lie in (0, 1), got {args.level}")
    results = results_by_name(args.results)
    tables = {
        name: phase_table(mi, window=args.window, level=args.level) for name, mi in results.items()
    }
    verdicts = phase_verdicts(tables)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    with replacing(out) as tmp:
        verdicts.to_csv(tmp, index=False, float_format="%.6g")
    summary = verdicts.drop_duplicates(["split", "layer"])
    for row in summary.itertuples():
        print(
            f"{row.split} {row.layer}: compression significant under {row.verdict} preset(s) "
            f"({row.significant_under} of {row.presets})"
        )
    print(out)
    return 0
