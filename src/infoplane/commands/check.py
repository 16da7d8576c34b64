"""``infoplane check MI``: report every point of a result that breaks an invariant."""

from __future__ import annotations

import argparse

_SHOWN = 50


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "check",
        help="check a result against the entropy and MI invariants",
        description=(
            "Report every (split, step, layer) of a result that breaks 0 <= S <= log2 N, "
            "max(S(A), S(B)) <= S(A,B) <= S(A) + S(B), 0 <= I(X;T) <= min(S(X), S(T)) or "
            "I(T;Y) <= S(Y), and every NaN point. Exits 1 when an invariant is broken. Also "
            "warns, with the remedy, where H(X), H(T) or H(X,T) is degenerate: saturated at "
            "log2 N (the kernel is too narrow: every sample its own cluster) or collapsed at 0, "
            "and where randomized spectra have error bars above the preset's "
            "spectrum.tolerance."
        ),
    )
    parser.add_argument("result", help="result file (mi/<estimator>.zarr), per run or stacked")
    parser.add_argument(
        "--tolerance", type=float, default=None, help="absolute slack in bits (default 1e-6)"
    )
    parser.add_argument(
        "--fail-on-nan", action="store_true", help="also exit 1 when some points are NaN"
    )
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    from collections import Counter

    from infoplane.report.checks import (
        DEFAULT_TOLERANCE,
        check_result,
        degenerate_estimates,
        imprecise_estimates,
        nan_points,
    )

    tolerance = DEFAULT_TOLERANCE if args.tolerance is None else args.tolerance
    violations = check_result(args.result, tolerance=tolerance)
    missing = nan_points(args.result)
    for violation in violations[:_SHOWN]:
        print(f"VIOLATION {violation}")
    if len(violations) > _SHOWN:
        print(f"... and {len(violations) - _SHOWN} more violations")
    for point in missing[:_SHOWN]:
        print("NaN " + ", ".join(f"{key} {value}" for key, value in point.items()))
    if len(missing) > _SHOWN:
        print(f"... and {len(missing) - _SHOWN} more NaN points")
    degenerate = degenerate_estimates(args.result)
    for entry in degenerate[:_SHOWN]:
        print(f"WARNING {entry}")
    if len(degenerate) > _SHOWN:
        print(f"... and {len(degenerate) - _SHOWN} more degenerate estimates")
    imprecise = imprecise_estimates(args.result)
    for entry in imprecise[:_SHOWN]:
        print(f"WARNING {entry}")
    if len(imprecise) > _SHOWN:
        print(f"... and {len(imprecise) - _SHOWN} more imprecise estimates")
    counts = Counter(v.invariant for v in violations)
    summary = "; ".join(f"{name}: {count}" for name, count in counts.items())
    print(
        f"{args.result}: {len(violations)} violation(s)"
        + (f" ({summary})" if summary else "")
        + f", {len(missing)} NaN point(s), {len(degenerate)} degenerate estimate(s), "
        + (f"{len(imprecise)} imprecise estimate(s), " if imprecise else "")
        + f"tolerance {tolerance:g} bits"
    )
    if violations or (args.fail_on_nan and missing):
        return 1
    return 0
