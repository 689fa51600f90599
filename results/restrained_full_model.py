"""Chapter 6's full 2-D runs of the paper's one-layer model (its Figure 4, left and right).

The 256x256 checkerboard, a 32x32 kernel drawn as the authors draw it
(``numpy.random.seed(7)``, ``randn``), Swish β = 1, average pooling, BCE with label 1,
weight decay α = 20, 1000 full-batch steps for each learning rate, as two copies in lockstep
(k = 1 and k = 3). float32, all learning rates batched into one vmapped program. Recorded
at every step: D and p = <K, c> of both copies; the full model's loss and region fractions
of copy 1 at 120 log-spaced steps.

usage (from the repository root): PYTHONPATH=src python results/restrained_full_model.py
writes results/restrained_full_model.npz and results/restrained_full_model.json
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

import restrained
from restrained import cnn_pde
from restrained import restrained_dynamics as rd

sys.path.insert(0, str(Path(__file__).resolve().parent))
import provenance

LRS = (0.01, 0.03, 0.05, 0.07, 0.09, 0.1, 0.11, 0.13)
ALPHA, STEPS, SEED, LOG_POINTS = 20.0, 1000, 7, 120
OUT = Path(__file__).resolve().parent / "restrained_full_model"


def authors_kernel(seed: int = SEED, size: int = 32) -> np.ndarray:
    """The first conv layer's weights in PySun.py: ``seed(7); randn(1, 1, 32, 32)``."""
    rng = np.random.RandomState(seed)
    return rng.randn(1, 1, size, size)[0, 0]


def main() -> None:
    info = restrained.setup()
    print(info.summary(), flush=True)
    image = jnp.asarray(cnn_pde.checkerboard(256), jnp.float32)
    patch = jnp.asarray(rd.CheckerboardMap().patch(), jnp.float32)
    kernel0 = jnp.asarray(authors_kernel(), jnp.float32)

    def gradient(k):
        return cnn_pde.loss_gradient(k, image, 1.0, 1.0, ALPHA)

    def observe(k):
        return jnp.sum(k * patch), k

    commit = provenance.git_commit()
    start = time.perf_counter()
    sweep = rd.twin_sweep(gradient, kernel0, LRS, STEPS, k=3, observe=observe, bound=1e12)
    p_a, kernels_a = sweep.observed_a
    p_b, _ = sweep.observed_b
    # The full model's loss and regions at log-spaced steps, from the stored kernels (one
    # forward pass each); recording them at every step inside the sweep costs far more.
    steps = np.unique(np.geomspace(1, STEPS, LOG_POINTS).round().astype(int))
    loss_fn = jax.jit(lambda k: cnn_pde.loss(k, image, 1.0, 1.0, ALPHA))
    regions_fn = jax.jit(lambda k: rd.region_fractions(cnn_pde.correlate_valid(image, k)))
    loss_a = np.full((len(LRS), steps.size), np.nan)
    regions_a = np.full((len(LRS), steps.size, 3), np.nan)
    for i in range(len(LRS)):
        for j, n in enumerate(steps):
            if sweep.alive[i, n - 1]:
                loss_a[i, j] = float(loss_fn(kernels_a[i, n - 1]))
                regions_a[i, j] = np.asarray(regions_fn(kernels_a[i, n - 1]))
    wall = time.perf_counter() - start
    np.savez_compressed(
        OUT.with_suffix(".npz"),
        lrs=np.asarray(LRS),
        kernel0=np.asarray(kernel0),
        divergence=sweep.divergence,
        loss_steps=steps,
        loss_a=loss_a,
        p_a=p_a,
        p_b=p_b,
        regions_a=regions_a,
        alive=sweep.alive,
        diverged_at=sweep.diverged_at,
        final_a=sweep.final_a,
        final_b=sweep.final_b,
    )
    record = provenance.write(
        OUT.with_suffix(".json"),
        wall_seconds=wall,
        commit=commit,
        extra={"lrs": LRS, "alpha": ALPHA, "steps": STEPS, "seed": SEED, "dtype": "float32"},
    )
    print(record, flush=True)
    for lr, d, dead in zip(LRS, sweep.divergence, sweep.diverged_at, strict=True):
        print(f"lr {lr}: D(last 100) {np.nanmean(d[-100:]):.3g}, diverged at {dead}")


if __name__ == "__main__":
    main()
