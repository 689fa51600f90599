r"""Learning-rate scans of the paper's Table 1 protocol (chapter 8).

The paper's Table 1 compares two spreads of the final test accuracy :math:`A_{s,k}` of a
grid of runs indexed by seed :math:`s` and re-association factor :math:`k`:

.. math::

    \sigma_k(s) = \operatorname{std}_k A_{s,k} \quad\text{(one seed, all } k\text{)},
    \qquad
    \sigma_s(k) = \operatorname{std}_s A_{s,k} \quad\text{(one } k\text{, all seeds)},

population standard deviations (``ddof = 0``), as in the authors' ``mean_variance.py``.
:func:`spread_statistics` computes them from the grid; :func:`sensitivity_lr_scan` trains
the ``sensitivity`` experiment's CI recipe at several base learning rates in one ensemble,
to find where :math:`\sigma_k` becomes comparable to :math:`\sigma_s`. Run it with
``python -m restrained.scans sensitivity-lr --profile ci`` (or ``gpu``).
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

SCAN_PROFILES = ("ci", "gpu")


def spread_statistics(grid: np.ndarray) -> dict[str, Any]:
    """Table 1 statistics of a ``(seeds, ks)`` grid of final accuracies.

    Returns the mean accuracy, the per-seed spread across ``k`` (``std_across_k``), the
    per-``k`` spread across seeds (``std_across_seeds``), their means, and their ratio
    ``mean std across k / mean std across seeds`` (``ratio``; ``nan`` if the latter is 0).

    Raises:
        ValueError: if ``grid`` is not a finite 2-D array with at least two rows and columns.
    """
    grid = np.asarray(grid, np.float64)
    if grid.ndim != 2 or grid.shape[0] < 2 or grid.shape[1] < 2:
        raise ValueError(f"grid must have shape (seeds >= 2, ks >= 2), got {grid.shape}")
    if not np.all(np.isfinite(grid)):
        raise ValueError("grid must hold finite accuracies")
    across_k = np.std(grid, axis=1)
    across_seeds = np.std(grid, axis=0)
    mean_k, mean_s = float(np.mean(across_k)), float(np.mean(across_seeds))
    return {
        "mean_accuracy": float(np.mean(grid)),
        "std_across_k": across_k.tolist(),
        "std_across_seeds": across_seeds.tolist(),
        "mean_std_across_k": mean_k,
        "mean_std_across_seeds": mean_s,
        "ratio": mean_k / mean_s if mean_s > 0 else float("nan"),
    }


def scan_setup(profile: str) -> dict[str, Any]:
    """Data, model and recipe of a scan profile.

    ``ci``: the ``sensitivity`` CI recipe (digits, small CNN, Nesterov 0.9, wd 5e-4,
    12 epochs, lr / 10 at epoch 8) at base learning rates 0.1, 0.2, 0.4, 0.8.
    ``gpu``: MNIST-1D generated on the spot (4,000 / 1,000), a 1-D CNN of width 64 and
    depth 3, same recipe, 30 epochs (lr / 10 at 20), base learning rates 0.05 to 0.8.
    """
    from restrained.experiments import spec

    if profile not in SCAN_PROFILES:
        raise ValueError(f"profile must be one of {SCAN_PROFILES}, got {profile!r}")
    base = spec("sensitivity", "ci")
    if profile == "ci":
        return {
            "dataset": "digits",
            "dataset_kwargs": {},
            "model": base.model,
            "model_kwargs": dict(base.model_kwargs),
            "train": base.train,
            "final_epochs": base.final_epochs,
            "learning_rates": (0.1, 0.2, 0.4, 0.8),
            "seeds": base.seeds,
            "ks": base.ks,
            "weight_decay": base.weight_decays[0],
        }
    train = dataclasses.replace(base.train, epochs=30, lr_milestones=(20,), batch_size=128)
    return {
        "dataset": "mnist1d",
        "dataset_kwargs": {"num_samples": 5000},
        "model": "small_cnn1d",
        "model_kwargs": {"width": 64, "depth": 3, "activation": "swish"},
        "train": train,
        "final_epochs": 10,
        "learning_rates": (0.05, 0.1, 0.2, 0.4, 0.8),
        "seeds": base.seeds,
        "ks": base.ks,
        "weight_decay": base.weight_decays[0],
    }


def sensitivity_lr_scan(
    profile: str = "ci",
    learning_rates: Sequence[float] | None = None,
    *,
    progress: bool = False,
) -> dict[str, Any]:
    """Train seeds x k x learning rates in one ensemble; Table 1 statistics per rate.

    Each member's final accuracy is the mean test accuracy of the last ``final_epochs``
    epochs. Also reports, per rate, the mean final ``D`` between the ``k > 1`` members
    and their ``k = 1`` twin, and how many members diverged (non-finite values).
    """
    from restrained.data import load_dataset
    from restrained.ensemble import Members
    from restrained.models import build_network
    from restrained.train import train_ensemble

    s = scan_setup(profile)
    lrs = tuple(float(v) for v in (learning_rates or s["learning_rates"]))
    data = load_dataset(s["dataset"], **s["dataset_kwargs"])
    net = build_network(s["model"], data.x_train.shape[1:], data.num_classes, **s["model_kwargs"])
    members = Members.grid(s["seeds"], s["ks"], lrs, (s["weight_decay"],))
    result = train_ensemble(net, data, members, s["train"], progress=progress)
    last = min(s["final_epochs"], len(result.history))
    acc = result.final("test_accuracy", last)
    final_d = np.asarray(result.history[-1]["D"], np.float64)
    rows = []
    seeds, ks = list(s["seeds"]), list(s["ks"])
    for lr in lrs:
        grid = np.full((len(seeds), len(ks)), np.nan)
        d_vals = []
        for m in range(members.size):
            if members.learning_rates[m] != lr:
                continue
            grid[seeds.index(members.seeds[m]), ks.index(members.ks[m])] = acc[m]
            if members.ks[m] != 1:
                d_vals.append(final_d[m])
        in_rate = [m for m in range(members.size) if members.learning_rates[m] == lr]
        diverged = int(np.sum(result.diverged_step[in_rate] >= 0))
        row = {"learning_rate": lr, "final_test_accuracy": grid.tolist(), "diverged": diverged}
        row["mean_final_D"] = float(np.mean(d_vals))
        if np.all(np.isfinite(grid)):
            row.update(spread_statistics(grid))
        rows.append(row)
    return {
        "experiment": "sensitivity-lr-scan",
        "profile": profile,
        "config": {
            "dataset": data.name,
            "n_train": int(data.x_train.shape[0]),
            "n_test": int(data.x_test.shape[0]),
            "model": s["model"],
            "model_kwargs": s["model_kwargs"],
            "train": dataclasses.asdict(s["train"]),
            "final_epochs": last,
            "seeds": seeds,
            "ks": ks,
            "weight_decay": s["weight_decay"],
            "learning_rates": list(lrs),
        },
        "rows": rows,
        "train_wall_time_s": round(result.wall_time_s, 2),
    }


GD_SCHEDULES = {
    "constant 0.05": (0.05, 0),
    "constant 0.25": (0.25, 0),
    "warm-up to 1.0": (1.0, 100),
}


def gd_sensitivity(
    schedules: dict[str, tuple[float, int]] | None = None,
    seeds: Sequence[int] = (1, 2, 3, 4, 5, 6),
    ks: Sequence[int] = (1, 3, 5, 7, 9, 11),
    *,
    n_train: int = 256,
    steps: int = 200,
) -> dict[str, Any]:
    """The Table 1 protocol with full-batch gradient descent on ``n_train`` digits.

    Per schedule ``(peak, warmup)`` (:func:`restrained.practice.warmup_schedule`), seed and
    ``k > 1``, a k = 1 / k pair is trained from the seed's initial network (two-layer Swish
    CNN of width 8); the final test accuracy of every copy fills a ``(seeds, ks)`` grid.
    """
    import jax
    import jax.numpy as jnp

    from restrained.data import load_digits
    from restrained.models import accuracy, build_network
    from restrained.practice import scheduled_twins, warmup_schedule

    if 1 not in ks:
        raise ValueError(f"ks must contain 1, got {ks}")
    data = load_digits()
    x, y = jnp.asarray(data.x_train[:n_train]), jnp.asarray(data.y_train[:n_train])
    x_test, y_test = jnp.asarray(data.x_test), jnp.asarray(data.y_test)
    net = build_network("small_cnn", x.shape[1:], 10, width=8, depth=2, activation="swish")
    _, stats = net.init(jax.random.PRNGKey(0))

    def loss(p: Any) -> jax.Array:
        return net.loss(p, stats, x, y)[0]

    def test_acc(p: Any) -> float:
        return float(accuracy(net.apply(p, stats, x_test, False)[0], y_test))

    rows = []
    for name, (peak, warmup) in (schedules or GD_SCHEDULES).items():
        schedule = warmup_schedule(peak, steps, warmup)
        grid = np.zeros((len(seeds), len(ks)))
        d_final = []
        for i, seed in enumerate(seeds):
            params, _ = net.init(jax.random.PRNGKey(seed))
            for j, k in enumerate(ks):
                if k == 1:
                    continue
                run = scheduled_twins(loss, params, schedule, k=k)
                grid[i, ks.index(1)] = test_acc(run["params_1"])
                grid[i, j] = test_acc(run["params_k"])
                d_final.append(float(run["D"][-1]))
        row = {
            "schedule": name,
            "peak": peak,
            "warmup": warmup,
            "final_test_accuracy": grid.tolist(),
        }
        row.update(spread_statistics(grid))
        row["mean_final_D"] = float(np.mean(d_final))
        rows.append(row)
    return {
        "experiment": "sensitivity-gd",
        "config": {"n_train": n_train, "steps": steps, "seeds": list(seeds), "ks": list(ks)},
        "rows": rows,
    }


def main(argv: list[str] | None = None) -> int:
    """``python -m restrained.scans sensitivity-lr --profile ci [--out results]``."""
    parser = argparse.ArgumentParser(prog="python -m restrained.scans", description=__doc__)
    parser.add_argument("scan", choices=["sensitivity-lr", "sensitivity-gd"])
    parser.add_argument("--profile", choices=SCAN_PROFILES, default="ci")
    parser.add_argument("--out", type=Path, default=Path("results"))
    args = parser.parse_args(argv)
    from restrained import setup
    from restrained.provenance import save_record

    setup()
    started = time.perf_counter()
    if args.scan == "sensitivity-gd":
        record = gd_sensitivity()
        name = "gd-ci"
    else:
        record = sensitivity_lr_scan(args.profile, progress=False)
        name = f"lr-scan-{args.profile}"
    path = args.out / "sensitivity" / f"{name}.json"
    wall = time.perf_counter() - started
    save_record(
        record,
        path,
        wall_time_s=wall,
        argv=["python", "-m", "restrained.scans", *(argv or sys.argv[1:])],
    )
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
