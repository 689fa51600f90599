"""Provenance record written next to every precomputed result: how to regenerate it.

A thin layer over :mod:`restrained.provenance` (shared with the experiment engine) that keeps
the flat record format of the chapter 6-7 result files.
"""

from __future__ import annotations

import json
import platform
import sys
from pathlib import Path

from restrained.provenance import device_info, package_versions
from restrained.provenance import git_commit as _git_state


def git_commit() -> str:
    """The commit of the working tree, with '+dirty' when it has uncommitted changes."""
    state = _git_state()
    if state["commit"] is None:
        return "unknown"
    return state["commit"] + ("+dirty" if state["dirty"] else "")


def write(
    path: Path, *, wall_seconds: float, extra: dict | None = None, commit: str | None = None
) -> dict:
    """Write ``path`` (JSON): command, commit, package versions, device, wall time.

    Pass the ``commit`` read when the computation started (:func:`git_commit`); by default it
    is read now.
    """
    import restrained

    device = device_info()
    record = {
        "command": "PYTHONPATH=src python " + " ".join(sys.argv),
        "commit": commit or git_commit(),
        "versions": {
            "python": platform.python_version(),
            **{k: v for k, v in package_versions(("jax", "numpy")).items()},
            "restrained": restrained.__version__,
        },
        "device": f"{device['backend']}: {device['device_kind']}",
        "machine": platform.machine(),
        "cpu": device["cpu"],
        "xla_flags": device["xla_flags"],
        "wall_seconds": round(wall_seconds, 1),
    }
    record.update(extra or {})
    path.write_text(json.dumps(record, indent=2) + "\n")
    return record
