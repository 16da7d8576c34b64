"""``infoplane train``: train one run of an experiment and capture its activations."""

from __future__ import annotations

import argparse
import logging
import sys


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the ``train`` sub-command."""
    parser = subparsers.add_parser(
        "train",
        help="train one run and capture its activations",
        description=(
            "Train run R (seed<S>) of experiment E from the config and write the activation "
            "store STORE. The run directory (the parent of STORE) also receives metrics.csv, "
            "iterations.csv and checkpoint.pt; a killed run resumes from its last checkpoint "
            "when started again with the same arguments."
        ),
    )
    parser.add_argument("--config", required=True, metavar="FILE", help="config.yaml")
    parser.add_argument("--experiment", required=True, metavar="E", help="experiment name")
    parser.add_argument("--run", required=True, metavar="R", help="run name, seed<S>")
    parser.add_argument(
        "--out", required=True, metavar="STORE", help="activation store, RUN_DIR/activations.zarr"
    )
    parser.add_argument(
        "--device",
        choices=("auto", "cpu", "cuda"),
        default=None,
        help="override training.device of the config (auto: CUDA when present, else CPU)",
    )
    parser.add_argument(
        "--restart",
        action="store_true",
        help="ignore any checkpoint and existing store and train from scratch",
    )
    parser.add_argument(
        "--work-dir",
        default=None,
        metavar="DIR",
        help="train in DIR and hard-link the products into the run directory when the run "
        "has finished; DIR keeps them, so a killed run resumes from DIR and a finished run "
        "whose outputs were deleted gets them back without training. For workflow managers "
        "that delete the outputs of failed jobs (the workflow passes RUN_DIR/.training)",
    )
    parser.set_defaults(handler=run_train)


def run_train(args: argparse.Namespace) -> int:
    """Handler of ``infoplane train``: validate everything, then train."""
    from infoplane.config import experiment_settings, load_config, seed_from_run
    from infoplane.train.training import train_run

    config = load_config(args.config)
    settings = experiment_settings(config, args.experiment)
    seed_from_run(args.run, settings)  # a bad run name fails before anything heavy is imported
    from infoplane.train.preflight import check_experiments

    check_experiments(config, [args.experiment])  # probe sizes, schedule, layer names

    training_log = logging.getLogger("infoplane.train.training")
    if training_log.getEffectiveLevel() > logging.INFO:
        training_log.setLevel(logging.INFO)  # one line per epoch belongs in batch logs
    progress = "bar" if sys.stderr.isatty() else "log"
    result = train_run(
        settings,
        run=args.run,
        out_store=args.out,
        progress=progress,
        device=args.device,
        restart=args.restart,
        work_dir=args.work_dir,
    )
    final = result.final
    print(
        f"{args.experiment}/{args.run}: {result.store} "
        f"(train acc {final['train']['accuracy']:.4f}, test acc {final['test']['accuracy']:.4f}, "
        f"device {result.device})"
    )
    return 0
