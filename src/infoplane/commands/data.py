"""``infoplane data fetch``: download and verify a dataset once, before its runs train."""

from __future__ import annotations

import argparse

DESCRIPTION = """\
Load dataset NAME the way `infoplane train` will (downloading it into ROOT/NAME/ when it is not
there yet, SHA-256-verified) and print a summary: sizes, input shape, classes and where the data
came from. With --out the summary is also written as JSON. Run it where the network is reachable
(a login node) so that training jobs find the files in place.
"""


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "data", help="fetch and verify datasets", description="Dataset utilities."
    )
    commands = parser.add_subparsers(dest="data_command", metavar="COMMAND", required=True)
    fetch = commands.add_parser(
        "fetch",
        help="download (if needed), verify and summarise a dataset",
        description=DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    fetch.add_argument("name", help="digits | mnist | cifar10 | npz | synthetic")
    fetch.add_argument("--root", default="data", help="download folder (default: data)")
    fetch.add_argument(
        "--options",
        default="{}",
        metavar="JSON",
        help='dataset options as a JSON mapping, e.g. \'{"source": "t10k"}\' (the dataset: '
        "mapping of an experiment without its name)",
    )
    fetch.add_argument("--out", default=None, metavar="FILE", help="write the summary as JSON")
    fetch.set_defaults(handler=run_fetch)


def parse_options(text: str) -> dict:
    """The ``--options`` JSON mapping; anything else raises :class:`ConfigError`."""
    import json

    from infoplane.errors import ConfigError

    try:
        options = json.loads(text)
    except ValueError as exc:
        raise ConfigError(f"--options must be a JSON mapping: {exc}") from None
    if not isinstance(options, dict):
        raise ConfigError(f"--options must be a JSON mapping, got {text!r}")
    options.pop("name", None)  # the whole dataset: mapping of an experiment is accepted too
    return options


def dataset_summary(dataset) -> dict:
    """JSON-serialisable summary of a loaded :class:`infoplane.train.datasets.Dataset`."""
    return {
        "name": dataset.name,
        "classes": dataset.classes,
        "n_train": len(dataset.y_train),
        "n_test": len(dataset.y_test),
        "input_shape": list(dataset.input_shape),
        "description": dataset.description,
    }


def run_fetch(args: argparse.Namespace) -> int:
    import json

    from infoplane.io.files import replacing
    from infoplane.train.datasets import load_dataset

    options = {"root": args.root, **parse_options(args.options)}
    summary = dataset_summary(load_dataset(args.name, **options))
    text = json.dumps(summary, indent=2, sort_keys=True, default=str) + "\n"
    if args.out:
        with replacing(args.out, tag="tmp") as tmp:
            tmp.write_text(text, encoding="utf-8")
    print(text, end="")
    return 0
