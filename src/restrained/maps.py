r"""Learning-rate x weight-decay stability maps of a small CNN, with sharpness (chapter 9).

Gradient descent with step :math:`\eta` and weight decay :math:`\alpha` on a loss with
Hessian :math:`H` is, linearised, :math:`\delta \mapsto (I - \eta(H + \alpha I))\delta`:
stable iff :math:`\eta < 2/(\lambda_{\max} + \alpha)` (Parts I to III). Weight directions
the data do not see have :math:`\lambda = 0` and give the weaker bound
:math:`\eta < 2/\alpha`. :func:`stability_map` trains a grid of k = 1 / k = 3 pairs with
plain mini-batch SGD and records, per cell, divergence, final loss and accuracy, ``D``
between the pair, and the sharpness :math:`\lambda_{\max}` of the (un-decayed) training
loss at the end (and at initialisation, which every cell shares).
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

MAP_LRS = (0.05, 0.1, 0.2, 0.4, 0.8, 1.6)
MAP_WDS = (0.0, 0.01, 0.1, 1.0)


def predicted_max_lr(sharpness: float, weight_decay: float) -> float:
    r"""The linear stability limit :math:`2/(\lambda_{\max} + \alpha)`.

    Raises:
        ValueError: if ``sharpness + weight_decay`` is not positive.
    """
    total = float(sharpness) + float(weight_decay)
    if not total > 0:
        raise ValueError(f"sharpness + weight_decay must be > 0, got {total}")
    return 2.0 / total


def measured_boundary(cells: Sequence[dict[str, Any]], weight_decay: float) -> dict[str, float]:
    """Largest learning rate that did not diverge and smallest one that did, at ``weight_decay``.

    ``inf`` when nothing diverged, ``nan`` largest-stable when everything did.
    """
    column = [c for c in cells if c["weight_decay"] == weight_decay]
    if not column:
        raise ValueError(f"no cell has weight_decay {weight_decay}")
    ok = [c["learning_rate"] for c in column if not c["diverged"]]
    bad = [c["learning_rate"] for c in column if c["diverged"]]
    return {
        "largest_trained": max(ok) if ok else float("nan"),
        "smallest_diverged": min(bad) if bad else float("inf"),
    }


def stability_map(
    depth: int = 2,
    learning_rates: Sequence[float] = MAP_LRS,
    weight_decays: Sequence[float] = MAP_WDS,
    *,
    epochs: int = 6,
    seed: int = 1,
    width: int = 8,
    sharpness_examples: int = 500,
) -> dict[str, Any]:
    """Train the grid on digits (SGD, batch 64, no momentum) and measure every cell.

    A cell counts as *diverged* when training produced non-finite values or its final
    training loss exceeds the initial loss ln 10 (the network collapsed). Sharpness is the
    top Hessian eigenvalue of the mean cross-entropy on the first ``sharpness_examples``
    training examples (Lanczos, :func:`restrained.sharpness.top_hessian_eigs`).
    """
    import jax
    import jax.numpy as jnp

    from restrained.data import load_digits
    from restrained.ensemble import Members
    from restrained.models import build_network
    from restrained.sharpness import top_hessian_eigs
    from restrained.train import TrainConfig, train_ensemble

    data = load_digits()
    net = build_network(
        "small_cnn", data.x_train.shape[1:], 10, width=width, depth=depth, activation="swish"
    )
    members = Members.grid((seed,), (1, 3), learning_rates, weight_decays)
    cfg = TrainConfig(epochs=epochs, batch_size=64, momentum=0.0, per_layer=False)
    result = train_ensemble(net, data, members, cfg)
    x = jnp.asarray(data.x_train[:sharpness_examples])
    y = jnp.asarray(data.y_train[:sharpness_examples])
    params0, stats0 = net.init(jax.random.split(jax.random.PRNGKey(seed), 3)[0])

    def loss(p: Any) -> jax.Array:
        return net.loss(p, stats0, x, y)[0]

    def sharpness(p: Any) -> float:
        return float(top_hessian_eigs(loss, p, k=1, tol=1e-3).values[0])

    last = result.history[-1]
    chance_loss = float(np.log(10.0))
    cells = []
    for m in range(members.size):
        if members.ks[m] != 1:
            continue
        finite = result.diverged_step[m] < 0
        final_loss = float(last["train_loss"][m])
        diverged = bool(not finite or final_loss > chance_loss)
        params = jax.tree_util.tree_map(lambda a, i=m: jnp.asarray(a[i]), result.params)
        cells.append(
            {
                "learning_rate": members.learning_rates[m],
                "weight_decay": members.weight_decays[m],
                "non_finite": bool(not finite),
                "diverged": diverged,
                "train_loss": final_loss,
                "test_accuracy": float(last["test_accuracy"][m]),
                "D_k3": float(last["D"][m + 1]),
                "sharpness": sharpness(params) if finite else None,
            }
        )
    return {
        "depth": depth,
        "width": width,
        "epochs": epochs,
        "seed": seed,
        "learning_rates": [float(v) for v in learning_rates],
        "weight_decays": [float(v) for v in weight_decays],
        "initial_sharpness": sharpness(params0),
        "cells": cells,
        "train_wall_time_s": round(result.wall_time_s, 2),
    }


def main(argv: list[str] | None = None) -> int:
    """``python -m restrained.maps [--depths 2 3] [--out results]``."""
    parser = argparse.ArgumentParser(prog="python -m restrained.maps", description=__doc__)
    parser.add_argument("--depths", type=int, nargs="+", default=[2, 3])
    parser.add_argument("--out", type=Path, default=Path("results"))
    args = parser.parse_args(argv)
    from restrained import setup
    from restrained.provenance import save_record

    setup()
    started = time.perf_counter()
    record = {"maps": [stability_map(depth=d) for d in args.depths]}
    path = args.out / "stability-map" / "sharpness-ci.json"
    wall = time.perf_counter() - started
    save_record(
        record,
        path,
        wall_time_s=wall,
        argv=["python", "-m", "restrained.maps", *(argv or sys.argv[1:])],
    )
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
