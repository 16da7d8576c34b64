"""The ``infoplane`` command line: a thin dispatcher over ``infoplane.commands``.

Each module in :data:`COMMAND_MODULES` defines ``register(subparsers)``, which adds its
sub-command and sets ``handler`` (a callable taking the parsed namespace and returning an exit
code). Command modules import only argparse at import time; heavy libraries are imported by the
handlers, so ``infoplane --help`` stays fast.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys
from collections.abc import Sequence

from infoplane import __version__
from infoplane.errors import InfoplaneError, describe_os_error

COMMAND_MODULES = (
    "infoplane.commands.data",
    "infoplane.commands.train",
    "infoplane.commands.store",
    "infoplane.commands.distances",
    "infoplane.commands.estimate",
    "infoplane.commands.check",
    "infoplane.commands.plot",
    "infoplane.commands.phases",
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="infoplane",
        description="Information-plane analysis of deep networks (matrix-based Rényi entropy).",
    )
    parser.add_argument("--version", action="version", version=f"infoplane {__version__}")
    parser.add_argument(
        "-v", "--verbose", action="count", default=0, help="more log output (-vv for debug)"
    )
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMAND_MODULES:
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError as exc:
            if exc.name != name:
                raise
            continue  # a stage not yet installed in this checkout
        module.register(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=(logging.WARNING, logging.INFO, logging.DEBUG)[min(args.verbose, 2)],
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    if getattr(args, "handler", None) is None:
        parser.print_help()
        return 2
    try:
        return int(args.handler(args) or 0)
    except InfoplaneError as exc:
        print(f"infoplane: error: {exc}", file=sys.stderr)
        return 1
    except OSError as exc:  # the disk: full, read-only, a path that vanished
        kept = (
            "every product is written beside its final name and moved into place when "
            "complete, so what was finished before (captured steps, cached steps, checkpoints, "
            "earlier results) is kept and a rerun resumes from it"
        )
        print(f"infoplane: error: {describe_os_error(exc, kept)}", file=sys.stderr)
        return 1
