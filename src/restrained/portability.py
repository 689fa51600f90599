r"""Rounding environments: the same program compiled for other CPUs, on this one.

XLA compiles for the CPU it runs on. Whether it contracts :math:`a b + c` into one fused
multiply-add (one rounding instead of two), how wide its vectors are, and how it orders a
reduction all change the last bits of a result. A reader's laptop, a CI runner and a GPU
therefore each run a slightly different program. This module makes such machines
reproducible on one host, through ``XLA_FLAGS``, which XLA reads once when its backend
starts (so each environment runs in its own process):

* ``native``: what this CPU gets by default;
* ``avx``: at most AVX, so no FMA (``--xla_cpu_max_isa=AVX``), like a pre-2013 x86 CPU;
* ``sse4_2``: 128-bit vectors and no FMA (``--xla_cpu_max_isa=SSE4_2``);
* ``fastmath``: XLA may reassociate sums and products (``--xla_cpu_enable_fast_math=true``),
  a stand-in for another compiler or library version that orders its arithmetic
  differently.

:func:`probe` hashes a few kernels (matrix products, a convolution, reductions, ``tanh``
and the gradient of a small tanh network); :func:`check` runs it in each environment and
tells which ones really change bits on this machine. The book's claims must hold in every
environment; bit identity is only ever tested *within* one.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

ENVIRONMENTS: dict[str, str] = {
    "native": "",
    "avx": "--xla_cpu_max_isa=AVX",
    "sse4_2": "--xla_cpu_max_isa=SSE4_2",
    "fastmath": "--xla_cpu_enable_fast_math=true",
}
ALTERNATIVES = ("avx", "sse4_2", "fastmath")


def xla_flags(environment: str, base: str | None = None) -> str:
    """``XLA_FLAGS`` for ``environment``: ``base`` (default: the current value) plus its flag.

    Raises:
        ValueError: if ``environment`` is not one of :data:`ENVIRONMENTS`.
    """
    if environment not in ENVIRONMENTS:
        raise ValueError(f"environment must be one of {tuple(ENVIRONMENTS)}, got {environment!r}")
    base = os.environ.get("XLA_FLAGS", "") if base is None else base
    kept = [f for f in base.split() if not f.startswith(("--xla_cpu_max_isa", "--xla_cpu_enable_fast_math"))]
    return " ".join([*kept, ENVIRONMENTS[environment]]).strip()


def environment_variables(environment: str) -> dict[str, str]:
    """A copy of ``os.environ`` whose ``XLA_FLAGS`` selects ``environment``."""
    env = dict(os.environ)
    env["XLA_FLAGS"] = xla_flags(environment)
    return env


def _digest(tree: Any) -> str:
    import jax
    import numpy as np

    leaves = jax.tree_util.tree_leaves(tree)
    return hashlib.sha256(b"".join(np.asarray(a).tobytes() for a in leaves)).hexdigest()[:16]


def probe() -> dict[str, str]:
    """SHA-256 prefixes of a few float32 kernels, computed in this process's environment."""
    import jax
    import jax.numpy as jnp

    from restrained.runtime import setup

    setup()
    keys = jax.random.split(jax.random.PRNGKey(0), 6)
    x = jax.random.normal(keys[0], (128, 257))
    w = jax.random.normal(keys[1], (257, 33))
    images = jax.random.normal(keys[2], (32, 8, 8, 8))
    kernel = jax.random.normal(keys[3], (3, 3, 8, 8))
    y = jax.random.normal(keys[4], (128, 33))

    def loss(p: tuple[Any, Any]) -> Any:
        return jnp.mean((jnp.tanh(x @ p[0]) @ p[1] - y) ** 2)

    dims = ("NHWC", "HWIO", "NHWC")
    p = (w / 16, jax.random.normal(keys[5], (33, 33)) / 6)
    return {
        "matmul": _digest(jax.jit(jnp.matmul)(x, w)),
        "conv": _digest(
            jax.jit(
                lambda a, b: jax.lax.conv_general_dilated(a, b, (1, 1), "SAME", dimension_numbers=dims)
            )(images, kernel)
        ),
        "sum": _digest(jax.jit(lambda a: jnp.sum(a, axis=1))(x)),
        "tanh": _digest(jax.jit(lambda a: jnp.tanh(a) * jnp.exp(-a * a))(x)),
        "tanh_network_gradient": _digest(jax.jit(jax.grad(loss))(p)),
    }


def run_in(environment: str, args: Sequence[str], *, timeout: float = 600.0) -> str:
    """Run ``python -m restrained.portability ARGS`` under ``environment``; return its stdout.

    Raises:
        RuntimeError: with the child's stderr if it fails.
    """
    proc = subprocess.run(
        [sys.executable, "-m", "restrained.portability", *args],
        env=environment_variables(environment),
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    if proc.returncode:
        raise RuntimeError(f"{environment}: {' '.join(args)} failed:\n{proc.stderr[-2000:]}")
    return proc.stdout


@dataclass(frozen=True)
class Check:
    """Per environment, the probe's digests; and which environments change bits here."""

    digests: dict[str, dict[str, str]]

    def differs_from_native(self, environment: str) -> bool:
        return self.digests[environment] != self.digests["native"]

    def distinct(self, environments: Sequence[str]) -> list[str]:
        """The environments that change bits, keeping the first of any identical group."""
        seen = [self.digests["native"]]
        out = []
        for name in environments:
            if self.digests[name] not in seen:
                seen.append(self.digests[name])
                out.append(name)
        return out

    def report(self) -> str:
        kernels = list(self.digests["native"])
        lines = ["environment  XLA flag                           " + "  ".join(kernels)]
        for name, digest in self.digests.items():
            same = [
                "same" if digest[k] == self.digests["native"][k] else "DIFF" for k in kernels
            ]
            cells = "  ".join(f"{s:<{len(k)}}" for s, k in zip(same, kernels, strict=True))
            lines.append(f"{name:<12} {ENVIRONMENTS[name] or '(none)':<34} {cells}")
        return "\n".join(lines)


def check(environments: Sequence[str] = tuple(ENVIRONMENTS)) -> Check:
    """Run :func:`probe` in each environment (one process each)."""
    names = ["native", *(e for e in environments if e != "native")]
    return Check({name: json.loads(run_in(name, ["probe"])) for name in names})


def main(argv: list[str] | None = None) -> int:
    import argparse

    parser = argparse.ArgumentParser(prog="python -m restrained.portability")
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("probe", help="print this environment's kernel digests as JSON")
    sub.add_parser("check", help="probe every environment and say which change bits")
    args = parser.parse_args(argv)
    if args.command == "probe":
        print(json.dumps(probe()))
        return 0
    result = check()
    print(result.report())
    print("distinct from native here:", ", ".join(result.distinct(ALTERNATIVES)) or "none")
    return 0


if __name__ == "__main__":
    sys.exit(main())
