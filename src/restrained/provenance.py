"""Where a result came from: command, code version, packages, devices, time."""

from __future__ import annotations

import datetime
import importlib.metadata
import json
import math
import os
import platform
import subprocess
import sys
from pathlib import Path
from typing import Any

PACKAGES = ("jax", "jaxlib", "flax", "optax", "orbax-checkpoint", "numpy", "mnist1d")


def git_commit(root: Path | None = None) -> dict[str, Any]:
    """``{"commit": sha or None, "dirty": bool or None}`` of the repository at ``root``."""
    root = Path(root or Path(__file__).resolve().parents[2])
    try:
        sha = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True, check=True
        ).stdout.strip()
        status = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=root,
            capture_output=True,
            text=True,
            check=True,
        ).stdout
        return {"commit": sha, "dirty": bool(status.strip())}
    except (OSError, subprocess.CalledProcessError):
        return {"commit": None, "dirty": None}


def package_versions(names: tuple[str, ...] = PACKAGES) -> dict[str, str | None]:
    """Installed versions of ``names`` (``None`` where not installed)."""
    out: dict[str, str | None] = {}
    for name in names:
        try:
            out[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            out[name] = None
    return out


# The x86 and Arm features that change how XLA:CPU rounds (vector width, FMA).
ISA_FLAGS = ("sse4_2", "avx", "avx2", "fma", "avx512f", "avx512_bf16", "amx_tile", "asimd", "sve")


def cpu_info() -> dict[str, Any]:
    """The host CPU's model name and the ISA features XLA:CPU compiles for.

    XLA compiles for the CPU it runs on, so these decide a result's last bits (see
    :mod:`restrained.portability`). Read from ``/proc/cpuinfo`` where it exists.
    """
    model, flags = platform.processor() or None, set()
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        text = ""
    for line in text.splitlines():
        key, _, value = line.partition(":")
        key = key.strip().lower()
        if key in ("model name", "cpu model") and model in (None, "", platform.machine()):
            model = value.strip()
        elif key in ("flags", "features") and not flags:
            flags = set(value.split())
    return {
        "model": model,
        "machine": platform.machine(),
        "isa": [f for f in ISA_FLAGS if f in flags],
    }


def device_info() -> dict[str, Any]:
    """JAX backend, devices, the host's CPU (model, ISA) and count, and ``XLA_FLAGS``."""
    import jax

    devices = jax.devices()
    return {
        "backend": jax.default_backend(),
        "devices": [str(d) for d in devices],
        "device_kind": devices[0].device_kind if devices else None,
        "process_count": jax.process_count(),
        "host_cpus": os.cpu_count(),
        "cpu": cpu_info(),
        "platform": platform.platform(),
        "matmul_precision": str(jax.config.jax_default_matmul_precision),
        "xla_flags": os.environ.get("XLA_FLAGS", ""),
    }


def provenance(wall_time_s: float | None = None, argv: list[str] | None = None) -> dict[str, Any]:
    """Everything above, plus the command line, Python version and UTC time."""
    return {
        "command": " ".join(argv if argv is not None else [sys.executable, *sys.argv]),
        "git": git_commit(),
        "python": sys.version.split()[0],
        "packages": package_versions(),
        "device": device_info(),
        "utc": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "wall_time_s": None if wall_time_s is None else round(float(wall_time_s), 2),
    }


def finite_json(value: Any) -> Any:
    """``value`` with every non-finite float replaced by ``None`` (strict JSON has no NaN)."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: finite_json(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [finite_json(v) for v in value]
    return value


def save_record(
    record: dict[str, Any], path: Path, *, wall_time_s: float, argv: list[str]
) -> dict[str, Any]:
    """Attach :func:`provenance` to ``record`` and write it to ``path`` as strict JSON."""
    record["provenance"] = provenance(wall_time_s, argv)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(finite_json(record), indent=1, allow_nan=False) + "\n")
    return record
