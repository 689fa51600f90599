"""Top Hessian eigenvalue: ``restrained.sharpness.top_hessian_eigs`` vs SciPy ARPACK ``eigsh``.

Both methods use the same jitted, chunked forward-over-reverse Hessian-vector product on the
same model (``SmallCNN(width=8, depth=2)``, swish, full-batch cross-entropy on the 1,300
training digits, chunks of 260) and the same tolerance: stop when every wanted Ritz pair has
residual bound ``<= tol * |theta|``, ARPACK's criterion (``which='LA'``). The baseline calls
the HVP once per Lanczos vector through a host round trip (NumPy in, NumPy out), as Cohen et
al.'s PyTorch code does. Ours keeps the Lanczos basis on the device, fuses each HVP with its
reorthogonalisation in one jitted step and tests convergence after every step (ARPACK only
after each restart cycle of ``ncv`` vectors). On CPU the steps are driven from Python
(``loop="host"``) because XLA:CPU runs convolutions inside a ``while_loop`` several times
slower; on a GPU the whole iteration runs in one ``lax.while_loop``.
Compilation is excluded (both are warmed up); each timing is the median of ``--repeats``
runs, the two methods alternating so that a change in machine load hits both.

Usage: PYTHONPATH=src python benchmarks/sharpness.py [--tol 1e-6] [--k 1] [--repeats 5]
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time

import restrained

INFO = restrained.setup()

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
from flax import nnx  # noqa: E402
from jax.flatten_util import ravel_pytree  # noqa: E402
from scipy.sparse.linalg import LinearOperator, eigsh  # noqa: E402

from restrained import data, models  # noqa: E402
from restrained import sharpness as sh  # noqa: E402


def build_problem(width: int, depth: int):
    split = data.load_digits()
    batch = (jnp.asarray(split.x_train), jnp.asarray(split.y_train))
    apply, params = models.functional(models.SmallCNN(width=width, depth=depth, rngs=nnx.Rngs(0)))

    def batch_loss(p, chunk):
        return models.cross_entropy(apply(p, chunk[0]), chunk[1])

    return batch_loss, params, batch


def interleaved_medians(first, second, repeats: int):
    """Median wall times of two callables timed alternately (fair under varying load)."""
    times: tuple[list[float], list[float]] = ([], [])
    outs = [None, None]
    for _ in range(repeats):
        for i, fn in enumerate((first, second)):
            start = time.perf_counter()
            outs[i] = fn()
            times[i].append(time.perf_counter() - start)
    return statistics.median(times[0]), outs[0], statistics.median(times[1]), outs[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tol", type=float, default=1e-6)
    parser.add_argument("--k", type=int, default=1)
    parser.add_argument("--width", type=int, default=8)
    parser.add_argument("--depth", type=int, default=2)
    parser.add_argument("--chunk", type=int, default=260)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--json", help="also write the results to this JSON file")
    args = parser.parse_args()

    batch_loss, params, batch = build_problem(args.width, args.depth)
    flat, unravel = ravel_pytree(params)
    n = int(flat.size)
    # The very same HVP for the baseline: jitted, chunked with lax.scan, forward-over-reverse.
    product = jax.jit(sh._flat_hvp(batch_loss, unravel, batch, args.chunk))
    counter = {"hvps": 0}

    def host_matvec(v: np.ndarray) -> np.ndarray:
        counter["hvps"] += 1
        out = product(flat, jnp.asarray(v.reshape(-1), flat.dtype))
        return np.asarray(out, dtype=np.float64)

    operator = LinearOperator((n, n), matvec=host_matvec, dtype=np.float64)
    v0 = np.asarray(jax.random.normal(jax.random.PRNGKey(0), (n,)), np.float64)

    def arpack(tol: float):
        counter["hvps"] = 0
        values = eigsh(operator, k=args.k, which="LA", tol=tol, v0=v0, return_eigenvectors=False)
        return np.sort(values)[::-1], counter["hvps"]

    def ours():
        return sh.top_hessian_eigs(
            batch_loss, params, k=args.k, tol=args.tol, data=batch, chunk_size=args.chunk
        )

    reference, _ = arpack(1e-12)  # also compiles the baseline's HVP
    ours()  # compile
    t_base, (base_values, base_hvps), t_ours, result = interleaved_medians(
        lambda: arpack(args.tol), ours, args.repeats
    )
    err_base = float(np.max(np.abs(base_values / reference - 1)))
    err_ours = float(np.max(np.abs(result.values / reference - 1)))
    ratio = t_base / t_ours
    report = {
        "model": f"SmallCNN(width={args.width}, depth={args.depth}, swish), {n} parameters",
        "data": f"{batch[0].shape[0]} digits, chunks of {args.chunk}",
        "k": args.k,
        "tol": args.tol,
        "reference_top_eigenvalues": reference.tolist(),
        "arpack": {"seconds": t_base, "hvps": base_hvps, "max_rel_error": err_base},
        "ours_lanczos_jit": {
            "seconds": t_ours,
            "hvps": result.num_hvps,
            "max_rel_error": err_ours,
            "converged": result.converged,
        },
        "speedup": ratio,
        "runtime": INFO.summary(),
        "machine": f"{platform.machine()} {platform.processor() or ''}".strip(),
    }
    print(f"model: {report['model']}; data: {report['data']}; k = {args.k}, tol = {args.tol:g}")
    print(f"reference top eigenvalue(s): {np.array2string(reference, precision=6)}")
    print(
        f"ARPACK eigsh (host HVPs): {t_base * 1e3:8.1f} ms, {base_hvps:3d} HVPs, "
        f"max rel. error {err_base:.1e}"
    )
    print(
        f"top_hessian_eigs (jit):   {t_ours * 1e3:8.1f} ms, {result.num_hvps:3d} HVPs, "
        f"max rel. error {err_ours:.1e}"
    )
    print(f"speed-up: {ratio:.2f}x  ({INFO.summary()})")
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(report, fh, indent=2)


if __name__ == "__main__":
    main()
