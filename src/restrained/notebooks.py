"""Execute the book's notebooks in place and time them (``make book-exec``, ``make times``).

Usage::

    python -m restrained.notebooks execute notebooks/00_the_puzzle.ipynb ...
    python -m restrained.notebooks time notebooks/*.ipynb      # run, do not save

Execution uses nbclient, like Jupyter Book, with the working directory set to the
notebook's folder and ``SLIDERS_LIVE=0``, so slider figures are stored precomputed.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path
from typing import Any


def run(path: Path, *, timeout: int = 600) -> tuple[Any, float]:
    """Run every cell of one notebook in a fresh kernel; return it executed, and the seconds.

    The kernel inherits this process's environment (``XLA_FLAGS`` included).
    """
    import nbformat
    from nbclient import NotebookClient

    os.environ.setdefault("SLIDERS_LIVE", "0")
    nb = nbformat.read(path, as_version=4)
    client = NotebookClient(
        nb,
        timeout=timeout,
        kernel_name="python3",
        resources={"metadata": {"path": str(path.parent)}},
    )
    start = time.perf_counter()
    client.execute()
    return nb, time.perf_counter() - start


def execute(path: Path, *, save: bool = True, timeout: int = 600) -> float:
    """Run every cell of one notebook, store its outputs if ``save``; return the seconds."""
    import nbformat

    nb, elapsed = run(path, timeout=timeout)
    if save:
        nbformat.write(nb, path)
    return elapsed


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m restrained.notebooks", description=__doc__)
    parser.add_argument(
        "action", choices=["execute", "time"], help="execute-and-save, or time only"
    )
    parser.add_argument("notebooks", nargs="+", type=Path)
    args = parser.parse_args(argv)
    missing = [p for p in args.notebooks if not p.is_file()]
    if missing:
        parser.error(f"no such notebook: {', '.join(map(str, missing))}")
    total = 0.0
    for path in args.notebooks:
        seconds = execute(path, save=args.action == "execute")
        total += seconds
        print(f"{seconds:7.1f} s  {path}", flush=True)
    print(f"{total:7.1f} s  total ({len(args.notebooks)} notebooks)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
