"""Numerical set-up shared by every notebook, script and test.

The book is about last-bit differences, so its numbers must not depend on hidden
precision switches or on run-to-run scheduling. :func:`setup` fixes three things:

1. float32 stays float32 (``jax_enable_x64`` off unless asked for);
2. matrix products and convolutions use ``precision="highest"``: on Ampere and Hopper
   GPUs JAX's default lets float32 matmuls run in TF32 (a 10-bit mantissa), which
   would swamp the 1-ulp effects the book studies;
3. XLA's deterministic-ops flag, so that GPU reductions do not use atomics and
   autotuning picks the same kernels on every run. XLA reads ``XLA_FLAGS`` once, when
   the backend starts, so :func:`setup` must run before the first computation.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

DETERMINISTIC_FLAG = "--xla_gpu_deterministic_ops=true"


@dataclass(frozen=True)
class RuntimeInfo:
    """What :func:`setup` configured, for provenance records and notebook headers."""

    jax_version: str
    backend: str
    devices: tuple[str, ...]
    matmul_precision: str
    x64: bool
    xla_flags: str

    def summary(self) -> str:
        """One line suitable for a notebook's first output."""
        return (
            f"jax {self.jax_version} on {self.backend} ({len(self.devices)} device(s)), "
            f"matmul precision {self.matmul_precision}, x64={self.x64}"
        )


def setup(*, x64: bool = False, deterministic: bool = True) -> RuntimeInfo:
    """Configure JAX for reproducible float32 work and return what was set.

    Call it at the top of every notebook, before any JAX computation.

    Args:
        x64: enable float64 arrays (the one-layer NumPy-scale chapters may want it).
        deterministic: add ``--xla_gpu_deterministic_ops=true`` to ``XLA_FLAGS``.
    """
    if deterministic:
        flags = os.environ.get("XLA_FLAGS", "")
        if DETERMINISTIC_FLAG not in flags:
            os.environ["XLA_FLAGS"] = f"{flags} {DETERMINISTIC_FLAG}".strip()
    import jax

    jax.config.update("jax_enable_x64", bool(x64))
    jax.config.update("jax_default_matmul_precision", "highest")
    devices = jax.devices()
    return RuntimeInfo(
        jax_version=jax.__version__,
        backend=jax.default_backend(),
        devices=tuple(str(d) for d in devices),
        matmul_precision=str(jax.config.jax_default_matmul_precision),
        x64=bool(jax.config.jax_enable_x64),
        xla_flags=os.environ.get("XLA_FLAGS", ""),
    )
