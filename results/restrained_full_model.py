"""Chapter 6's full 2-D runs of the paper's one-layer model (its Figure 4, left and right).

The 256x256 checkerboard, a 32x32 kernel drawn as the authors draw it
(``numpy.random.seed(7)``, ``randn``), Swish β = 1, average pooling, BCE with label 1,
weight decay α = 20, 500 full-batch steps for each learning rate (the paper runs 1000), as
two copies in lockstep (k = 1 and k = 3). float32, all learning rates batched into one
vmapped program. Recorded at every step: D and p = <K, c> of both copies; the full model's
loss and region fractions of copy 1 at about 25 log-spaced steps.

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
ALPHA, STEPS, SEED, LOG_POINTS = 20.0, 500, 7, 30
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
        return jnp.sum(k * patch)

    commit = provenance.git_commit()
    start = time.perf_counter()
    # Run in segments that end at log-spaced checkpoints; the kernels at each checkpoint give
    # the full model's loss and regions (one forward pass each).
    checkpoints = np.unique(np.geomspace(1, STEPS, LOG_POINTS).round().astype(int))
    loss_fn = jax.jit(lambda k: cnn_pde.loss(k, image, 1.0, 1.0, ALPHA))
    regions_fn = jax.jit(lambda k: rd.region_fractions(cnn_pde.correlate_valid(image, k)))
    n_lr = len(LRS)
    state_a = jnp.broadcast_to(kernel0, (n_lr, *kernel0.shape))
    state_b = state_a
    divergence, p_a, p_b, alive = [], [], [], []
    loss_a = np.full((n_lr, checkpoints.size), np.nan)
    regions_a = np.full((n_lr, checkpoints.size, 3), np.nan)
    done = 0
    for j, n in enumerate(checkpoints):
        seg = rd.twin_sweep(
            gradient, state_a, LRS, int(n - done), k=3, observe=observe, x0_b=state_b
        )
        state_a, state_b = jnp.asarray(seg.final_a), jnp.asarray(seg.final_b)
        divergence.append(seg.divergence)
        p_a.append(seg.observed_a)
        p_b.append(seg.observed_b)
        alive.append(seg.alive)
        ok = np.all(np.concatenate(alive, axis=1), axis=1)
        for i in range(n_lr):
            if ok[i]:
                loss_a[i, j] = float(loss_fn(state_a[i]))
                regions_a[i, j] = np.asarray(regions_fn(state_a[i]))
        done = int(n)
        print(f"step {done}: {time.perf_counter() - start:.0f} s", flush=True)
    divergence = np.concatenate(divergence, axis=1)
    p_a, p_b = np.concatenate(p_a, axis=1), np.concatenate(p_b, axis=1)
    alive = np.cumprod(np.concatenate(alive, axis=1), axis=1).astype(bool)
    diverged_at = np.where(alive.all(axis=1), -1, np.argmin(alive, axis=1) + 1)
    steps = checkpoints
    wall = time.perf_counter() - start
    np.savez_compressed(
        OUT.with_suffix(".npz"),
        lrs=np.asarray(LRS),
        kernel0=np.asarray(kernel0),
        divergence=divergence,
        loss_steps=steps,
        loss_a=loss_a,
        p_a=p_a,
        p_b=p_b,
        regions_a=regions_a,
        alive=alive,
        diverged_at=diverged_at,
        final_a=np.asarray(state_a),
        final_b=np.asarray(state_b),
    )
    record = provenance.write(
        OUT.with_suffix(".json"),
        wall_seconds=wall,
        commit=commit,
        extra={"lrs": LRS, "alpha": ALPHA, "steps": STEPS, "seed": SEED, "dtype": "float32"},
    )
    print(record, flush=True)
    for lr, d, dead in zip(LRS, divergence, diverged_at, strict=True):
        print(f"lr {lr}: D(last 100) {np.nanmean(d[-100:]):.3g}, diverged at {dead}")


if __name__ == "__main__":
    main()
