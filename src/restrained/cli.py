"""Command line: ``python -m restrained run <experiment> --profile {ci,gpu,paper}``.

Each run writes ``<out>/<experiment>/<profile>.json`` (default ``results/``) holding the
configuration, the metrics and the provenance (command, git commit, package versions,
devices, wall time).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from restrained.experiments import EXPERIMENTS, PROFILES


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer >= 1, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected an integer >= 1, got {value}")
    return value


def _non_negative_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer >= 0, got {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"expected an integer >= 0, got {value}")
    return value


def parser() -> argparse.ArgumentParser:
    """The argument parser (its ``--help`` is the CLI's documentation)."""
    top = argparse.ArgumentParser(
        prog="python -m restrained",
        description="Run the book's full-scale experiments and write their results as JSON.",
    )
    commands = top.add_subparsers(dest="command", required=True, metavar="COMMAND")
    run = commands.add_parser(
        "run",
        help="run one experiment",
        description=(
            "Run one experiment. sensitivity: the paper's Table 1 (accuracy spread across k "
            "vs across seeds). divergence: the paper's Fig. 2 (D between k=1 and k=3 copies "
            "against PDE time t = lr * steps, for several lr). stability-map: an lr x weight "
            "decay grid of k=1/k=3 pairs. Profiles: ci (two CPU cores, digits, small CNN, "
            "minutes), gpu (reduced CIFAR-10 run for one GPU), paper (ResNet-56, CIFAR-10, "
            "200 epochs, 6 seeds x 6 k)."
        ),
    )
    run.add_argument("experiment", choices=EXPERIMENTS, help="which experiment")
    run.add_argument("--profile", choices=PROFILES, required=True, help="problem size")
    run.add_argument(
        "--out",
        type=Path,
        default=Path("results"),
        help="results root; the JSON goes to OUT/EXPERIMENT/PROFILE.json (default: results)",
    )
    run.add_argument("--epochs", type=_positive_int, help="override the profile's epochs")
    run.add_argument(
        "--seeds", type=_positive_int, help="override the number of seeds (seeds 1..N)"
    )
    run.add_argument(
        "--data-dir",
        help="dataset cache (default: $RESTRAINED_DATA_DIR or ~/.cache/restrained)",
    )
    run.add_argument(
        "--no-download",
        action="store_true",
        help="never download; fail with instructions if a dataset is not cached",
    )
    run.add_argument("--checkpoint-dir", help="directory for Orbax checkpoints (sensitivity)")
    run.add_argument(
        "--checkpoint-every",
        type=_non_negative_int,
        default=0,
        help="steps between checkpoints (default 0: none); needs --checkpoint-dir",
    )
    run.add_argument(
        "--no-resume", action="store_true", help="ignore existing checkpoints and start afresh"
    )
    run.add_argument("--no-progress", action="store_true", help="hide the tqdm progress bar")
    return top


def main(argv: list[str] | None = None) -> int:
    """Entry point; returns the process exit status."""
    argv = sys.argv[1:] if argv is None else argv
    args = parser().parse_args(argv)
    if args.checkpoint_every and not args.checkpoint_dir:
        parser().error("--checkpoint-every needs --checkpoint-dir")
    if args.checkpoint_dir and args.experiment != "sensitivity":
        parser().error("--checkpoint-dir is supported for the sensitivity experiment only")

    from restrained import setup, sharding

    sharding.maybe_initialize_distributed()
    setup()
    from restrained.data import DatasetUnavailableError
    from restrained.experiments import run
    from restrained.provenance import save_record

    started = time.perf_counter()
    try:
        record = run(
            args.experiment,
            args.profile,
            epochs=args.epochs,
            seeds=args.seeds,
            data_dir=args.data_dir,
            download=not args.no_download,
            checkpoint_dir=args.checkpoint_dir,
            checkpoint_every=args.checkpoint_every,
            resume=not args.no_resume,
            progress=not args.no_progress,
        )
    except (DatasetUnavailableError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    path = args.out / args.experiment / f"{args.profile}.json"
    import jax

    if jax.process_index() == 0:
        wall = time.perf_counter() - started
        save_record(record, path, wall_time_s=wall, argv=["python", "-m", "restrained", *argv])
        print(f"wrote {path} ({record['provenance']['wall_time_s']} s)")
    return 0
