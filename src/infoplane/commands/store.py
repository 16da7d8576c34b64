"""``infoplane store info|validate STORE``: inspect and check an activation store."""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "store",
        help="inspect or validate an activation store",
        description="Inspect or validate an activation store (activations.zarr).",
    )
    actions = parser.add_subparsers(dest="store_command", metavar="ACTION", required=True)
    info = actions.add_parser(
        "info",
        help="layers, shapes, dtypes, steps, size and compression",
        description="Print layers, shapes, dtypes, captured/planned steps, size on disk and the "
        "compression ratio of an activation store.",
    )
    info.add_argument("store", metavar="STORE", help="path of the activations.zarr store")
    info.add_argument("--json", action="store_true", help="print the summary as JSON")
    info.set_defaults(handler=run_info)
    validate = actions.add_parser(
        "validate",
        help="check the contract and decode every chunk of every captured step",
        description="Check schema, dimensions, dtypes, chunking and captured flags, and decode "
        "every chunk of every captured step. Prints one 'error:' line per fault that makes "
        "reads impossible or wrong and one 'warning:' line per thing that is off in a store that "
        "still reads correctly, each naming split, variable and step and how to fix it, then a "
        "summary. Exits 1 on any error (with --strict also on warnings), else 0.",
    )
    validate.add_argument("store", metavar="STORE", help="path of the activations.zarr store")
    validate.add_argument(
        "--strict", action="store_true", help="fail (exit 1) on warnings too, not only on errors"
    )
    validate.set_defaults(handler=run_validate)


def _size(n: int) -> str:
    value = float(n)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if value < 1024 or unit == "GiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    raise AssertionError("unreachable")


def format_info(info: dict[str, Any]) -> str:
    """Human-readable rendering of :func:`infoplane.io.store.store_info`."""
    from infoplane.io.store import PROVENANCE_KEYS

    lines = [f"store {info['path']}"]
    described = (*PROVENANCE_KEYS, "device")
    lines.append("  " + ", ".join(f"{k} {info.get(k)}" for k in described))
    versions = ("schema_version", "infoplane_version", "torch_version", "activation_dtype")
    lines.append("  " + ", ".join(f"{k} {info[k]}" for k in versions if k in info))
    lines.append(f"  layers (input side first): {', '.join(info['layers'])}")
    for split, entry in info["splits"].items():
        captured = entry.get("captured_steps", [])
        span = f", steps {captured[0]}..{captured[-1]}" if captured else ""
        lines.append(
            f"split {split}: {entry.get('n_samples', '?')} samples, "
            f"{entry.get('steps_captured', '?')}/{entry.get('steps_planned', '?')} steps "
            f"captured{span}"
        )
        width = max([len(name) for name in entry["variables"]] + [8])
        lines.append(f"  {'variable':<{width}}  {'shape':<16} {'dtype':<8} {'stored':>10} ratio")
        for name, var in entry["variables"].items():
            shape = str(tuple(var["shape"]))
            ratio = f"{var['raw_bytes'] / var['stored_bytes']:.2f}" if var["stored_bytes"] else "-"
            lines.append(
                f"  {name:<{width}}  {shape:<16} {var['dtype']:<8} "
                f"{_size(var['stored_bytes']):>10} {ratio}"
            )
    ratio = info["compression_ratio"]
    lines.append(
        f"size on disk {_size(info['size_on_disk'])}, compression ratio "
        + (f"{ratio:.2f} (raw {_size(info['raw_bytes'])})" if ratio else "- (nothing captured)")
    )
    return "\n".join(lines)


def run_info(args: argparse.Namespace) -> int:
    from infoplane.io.store import store_info

    info = store_info(args.store)
    print(json.dumps(info, indent=2) if args.json else format_info(info))
    return 0


def _count(n: int, word: str) -> str:
    return f"{n} {word}" + ("" if n == 1 else "s")


def run_validate(args: argparse.Namespace) -> int:
    from infoplane.io.store import validate_store

    report = validate_store(args.store)
    for message in report.errors:
        print(f"error: {message}", file=sys.stderr)
    for message in report.warnings:
        print(f"warning: {message}", file=sys.stderr)
    counts = f"{_count(len(report.errors), 'error')}, {_count(len(report.warnings), 'warning')}"
    if not report.ok or (args.strict and report.warnings):
        why = "" if report.errors else " (--strict: warnings fail)"
        print(f"{args.store}: invalid: {counts}{why}", file=sys.stderr)
        return 1
    print(f"{args.store}: valid" + (f" ({counts})" if report.warnings else ""))
    return 0
