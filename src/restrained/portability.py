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
* ``fastmath``: XLA may reassociate sums and products (``--xla_cpu_enable_fast_math=true``).
  This is not another CPU but another *semantics*: allowed to use exact-arithmetic
  identities, the compiler may undo the k-trick itself, so it is not one of the
  :data:`ALTERNATIVES` the book's claims are tested under.

:func:`probe` hashes a few kernels (matrix products, a convolution, reductions, ``tanh``
and the gradient of a small tanh network); :func:`check` runs it in each environment and
tells which ones really change bits on this machine. The book's claims must hold in every
environment; bit identity is only ever tested *within* one.

Notebooks print a value that depends on the machine's last bits (a round-off residual, a
statistic of a chaotic run) as ``≈value``. nbval does not compare such values
(``tests/nbval_sanitize.cfg``); :func:`spread` executes notebooks in several environments
and collects them, so that every relaxed margin can be set from a measured spread.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ENVIRONMENTS: dict[str, str] = {
    "native": "",
    "avx": "--xla_cpu_max_isa=AVX",
    "sse4_2": "--xla_cpu_max_isa=SSE4_2",
    "fastmath": "--xla_cpu_enable_fast_math=true",
}
ALTERNATIVES = ("avx", "sse4_2")


def xla_flags(environment: str, base: str | None = None) -> str:
    """``XLA_FLAGS`` for ``environment``: ``base`` (default: the current value) plus its flag.

    Raises:
        ValueError: if ``environment`` is not one of :data:`ENVIRONMENTS`.
    """
    if environment not in ENVIRONMENTS:
        raise ValueError(f"environment must be one of {tuple(ENVIRONMENTS)}, got {environment!r}")
    base = os.environ.get("XLA_FLAGS", "") if base is None else base
    kept = [
        f
        for f in base.split()
        if not f.startswith(("--xla_cpu_max_isa", "--xla_cpu_enable_fast_math"))
    ]
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
                lambda a, b: jax.lax.conv_general_dilated(
                    a, b, (1, 1), "SAME", dimension_numbers=dims
                )
            )(images, kernel)
        ),
        "matvec": _digest(jax.jit(jnp.matmul)(x, w[:, 0])),
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
        """A table: per environment and kernel, whether its bits differ from native's."""
        kernels = list(self.digests["native"])
        head = f"{'environment':<12} {'XLA_FLAGS':<34} " + "  ".join(kernels) + "  same bits as"
        lines = [head]
        names = list(self.digests)
        for i, name in enumerate(names):
            digest = self.digests[name]
            marks = ["same" if digest[k] == self.digests["native"][k] else "DIFF" for k in kernels]
            cells = "  ".join(f"{m:<{len(k)}}" for m, k in zip(marks, kernels, strict=True))
            twin = next((n for n in names[:i] if self.digests[n] == digest), "-")
            lines.append(f"{name:<12} {ENVIRONMENTS[name] or '(none)':<34} {cells}  {twin}")
        return "\n".join(lines)


def check(environments: Sequence[str] = tuple(ENVIRONMENTS)) -> Check:
    """Run :func:`probe` in each environment (one process each)."""
    names = ["native", *(e for e in environments if e != "native")]
    return Check({name: json.loads(run_in(name, ["probe"])) for name in names})


def _puzzle_arrays(orders: int) -> dict[str, Any]:
    """Chapter 1's twins at both learning rates: final copy-A weights, final D, test labels."""
    import jax
    import numpy as np

    from restrained.data import load_digits
    from restrained.runtime import setup
    from restrained.twins import PUZZLE_LEARNING_RATES, puzzle_network, puzzle_runs

    setup()
    runs = puzzle_runs(orders=orders)
    apply, _ = puzzle_network()
    x_test = load_digits().x_test
    out: dict[str, Any] = {
        "gradient": np.asarray(_puzzle_gradient()),
        "digests": np.asarray(json.dumps(probe())),
    }
    for lr in PUZZLE_LEARNING_RATES:
        records = [runs[lr, o] for o in range(orders)]
        out[f"{lr}/weights"] = np.stack(
            [
                np.concatenate([np.ravel(w) for w in jax.tree_util.tree_leaves(r.params_a)])
                for r in records
            ]
        )
        out[f"{lr}/D"] = np.asarray([r.divergence[-1] for r in records])
        out[f"{lr}/labels"] = np.stack([np.argmax(apply(r.params_a, x_test), -1) for r in records])
    return out


def _puzzle_gradient() -> Any:
    """The gradient of chapter 1's loss at the initial weights, on the first 128 images."""
    import jax
    import jax.numpy as jnp

    from restrained.data import load_digits
    from restrained.models import cross_entropy
    from restrained.twins import puzzle_network

    data = load_digits()
    apply, params = puzzle_network()
    x, y = jnp.asarray(data.x_train[:128]), jnp.asarray(data.y_train[:128])
    grads = jax.jit(jax.grad(lambda p: cross_entropy(apply(p, x), y)))(params)
    return jnp.concatenate([jnp.ravel(g) for g in jax.tree_util.tree_leaves(grads)])


def puzzle_in(environments: Sequence[str], orders: int = 8) -> dict[str, dict[str, Any]]:
    """Chapter 1's experiment run once in each environment, in parallel processes.

    Per environment: ``digests`` (:func:`probe`'s, as JSON), ``gradient`` (the loss
    gradient at the initial weights), and per
    learning rate ``lr``: ``lr/weights`` (orders x weights, copy A, k = 1), ``lr/D``
    (final D between copy A and the k = 3 copy B) and ``lr/labels`` (copy A's test labels).
    """
    import tempfile

    import numpy as np

    if isinstance(orders, bool) or not isinstance(orders, int) or orders < 1:
        raise ValueError(f"orders must be an integer >= 1, got {orders!r}")
    with tempfile.TemporaryDirectory() as tmp:
        procs = {}
        for env in environments:
            path = Path(tmp) / f"{env}.npz"
            cmd = [sys.executable, "-m", "restrained.portability", "puzzle", str(orders), str(path)]
            procs[env] = (
                path,
                subprocess.Popen(
                    cmd, env=environment_variables(env), stderr=subprocess.PIPE, text=True
                ),
            )
        out = {}
        for env, (path, proc) in procs.items():
            _, err = proc.communicate(timeout=900)
            if proc.returncode:
                raise RuntimeError(f"{env}: chapter 1's runs failed:\n{err[-2000:]}")
            with np.load(path) as arrays:
                out[env] = {key: arrays[key] for key in arrays.files}
    return out


MARKED = re.compile(r"≈\s?([-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?)(%?)")


def marked_values(text: str) -> list[tuple[str, list[float]]]:
    """Each line of ``text`` holding ``≈`` values: the line with them blanked, and the values.

    A value followed by ``%`` is returned as a fraction (``≈1.5%`` gives 0.015).
    """
    out = []
    for line in text.splitlines():
        found = MARKED.findall(line)
        if found:
            values = [float(v) / (100 if pct else 1) for v, pct in found]
            out.append((MARKED.sub("≈…", line), values))
    return out


def _stream_text(nb: Any) -> list[tuple[int, str]]:
    cells = []
    for i, cell in enumerate(c for c in nb.cells if c.cell_type == "code"):
        text = "".join(
            o.get("text", "")
            if o.get("output_type") == "stream"
            else o.get("data", {}).get("text/plain", "")
            for o in cell.get("outputs", [])
        )
        cells.append((i, text))
    return cells


def spread(notebooks: Sequence[Path], environments: Sequence[str]) -> dict[str, Any]:
    """Execute ``notebooks`` once per environment and collect every ``≈`` value they print.

    Returns ``{"environments": {name: flags}, "seconds": {name: {notebook: s}},
    "values": {notebook: [{"cell", "line", "values": {env: [...]}}]}}``; ``cell`` is the
    index among code cells, as nbval counts them. A line whose values differ in number
    between environments is kept once per environment.
    """
    from restrained.notebooks import run

    saved = os.environ.get("XLA_FLAGS")
    seconds: dict[str, dict[str, float]] = {}
    found: dict[str, dict[tuple[int, str, int], dict[str, list[float]]]] = {}
    try:
        for env in environments:
            os.environ["XLA_FLAGS"] = xla_flags(env, saved or "")
            seconds[env] = {}
            for path in notebooks:
                nb, sec = run(Path(path))
                seconds[env][str(path)] = round(sec, 1)
                rows = found.setdefault(str(path), {})
                for cell, text in _stream_text(nb):
                    for n, (line, values) in enumerate(marked_values(text)):
                        rows.setdefault((cell, line, n), {})[env] = values
    finally:
        if saved is None:
            os.environ.pop("XLA_FLAGS", None)
        else:
            os.environ["XLA_FLAGS"] = saved
    return {
        "environments": {env: ENVIRONMENTS[env] for env in environments},
        "seconds": seconds,
        "values": {
            nb: [{"cell": c, "line": line, "values": v} for (c, line, _), v in rows.items()]
            for nb, rows in found.items()
        },
    }


def spread_table(record: dict[str, Any]) -> list[str]:
    """One line per printed ``≈`` line of :func:`spread`'s record: its values in every
    environment, and whether they differ."""
    envs = list(record["environments"])
    lines = []
    for nb, rows in record["values"].items():
        for row in rows:
            values = [row["values"].get(env) for env in envs]
            differs = len({json.dumps(v) for v in values}) > 1
            shown = " | ".join(
                "-" if v is None else " ".join(f"{x:.3g}" for x in v) for v in values
            )
            where = f"{Path(nb).stem}[{row['cell']}]"
            lines.append(f"{'DIFF' if differs else 'same'}  {where} {row['line'][:60]}  {shown}")
    return lines


def main(argv: list[str] | None = None) -> int:
    import argparse

    parser = argparse.ArgumentParser(prog="python -m restrained.portability")
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("probe", help="print this environment's kernel digests as JSON")
    puz = sub.add_parser("puzzle", help="run chapter 1's twins here and save them (npz)")
    puz.add_argument("orders", type=int)
    puz.add_argument("out", type=Path)
    chk = sub.add_parser("check", help="probe every environment and say which change bits")
    chk.add_argument("--write", type=Path, help="write the distinct alternatives here, one a line")
    flags = sub.add_parser("flags", help="print XLA_FLAGS for one environment")
    flags.add_argument("environment", choices=tuple(ENVIRONMENTS))
    spr = sub.add_parser("spread", help="collect the ≈ values of notebooks in every environment")
    spr.add_argument("notebooks", nargs="+", type=Path)
    spr.add_argument("--out", type=Path, required=True)
    spr.add_argument("--environments", nargs="+", default=None, choices=tuple(ENVIRONMENTS))
    tab = sub.add_parser("table", help="print a stored spread record, one line per value line")
    tab.add_argument("record", type=Path)
    args = parser.parse_args(argv)
    if args.command == "table":
        print("\n".join(spread_table(json.loads(args.record.read_text()))))
        return 0
    if args.command == "probe":
        print(json.dumps(probe()))
        return 0
    if args.command == "puzzle":
        import numpy as np

        np.savez(args.out, **_puzzle_arrays(args.orders))
        return 0
    if args.command == "flags":
        print(xla_flags(args.environment))
        return 0
    if args.command == "check":
        result = check(("native", *ALTERNATIVES))
        print(result.report())
        distinct = result.distinct(ALTERNATIVES)
        print("distinct from native, and from each other, here:", ", ".join(distinct) or "none")
        if args.write:
            args.write.write_text("".join(f"{name}\n" for name in distinct))
        if len(distinct) < 2:
            print("error: fewer than two alternative rounding environments change bits here")
            return 1
        return 0
    from restrained.provenance import save_record

    environments = args.environments or [
        "native",
        *check(("native", *ALTERNATIVES)).distinct(ALTERNATIVES),
    ]
    started = time.perf_counter()
    record = spread(args.notebooks, environments)
    save_record(
        record,
        args.out,
        wall_time_s=time.perf_counter() - started,
        argv=["python", "-m", "restrained.portability", *(argv or sys.argv[1:])],
    )
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
