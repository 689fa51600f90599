"""Provenance record written next to every precomputed result: how to regenerate it."""

from __future__ import annotations

import json
import platform
import subprocess
import sys
from pathlib import Path


def git_commit() -> str:
    """The commit of the working tree, with '+dirty' when it has uncommitted changes."""
    try:
        head = subprocess.run(
            ["git", "rev-parse", "HEAD"], capture_output=True, text=True, check=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
        return head + ("+dirty" if dirty else "")
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def write(
    path: Path, *, wall_seconds: float, extra: dict | None = None, commit: str | None = None
) -> dict:
    """Write ``path`` (JSON): command, commit, package versions, device, wall time.

    Pass the ``commit`` read when the computation started (:func:`git_commit`); by default it
    is read now.
    """
    import jax
    import numpy as np

    import restrained

    record = {
        "command": "PYTHONPATH=src python " + " ".join(sys.argv),
        "commit": commit or git_commit(),
        "versions": {
            "python": platform.python_version(),
            "jax": jax.__version__,
            "numpy": np.__version__,
            "restrained": restrained.__version__,
        },
        "device": f"{jax.default_backend()}: {jax.devices()[0].device_kind}",
        "machine": platform.machine(),
        "wall_seconds": round(wall_seconds, 1),
    }
    record.update(extra or {})
    path.write_text(json.dumps(record, indent=2) + "\n")
    return record
