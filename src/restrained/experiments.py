r"""The book's full-scale experiments, each in three sizes (profiles).

* ``sensitivity`` (the paper's Table 1): seeds x k members trained with the paper's
  recipe; the final test accuracy of each (mean over the last epochs), its population
  standard deviation across k at a fixed seed, and across seeds at k = 1.
* ``divergence`` (the paper's Fig. 2): for several learning rates :math:`\eta = \eta_0/n`,
  a k = 1 and a k = 3 copy trained with plain SGD, and ``D`` between them recorded every
  ``n`` steps, i.e. at the same PDE times :math:`t = \eta \cdot \text{step}` for every
  :math:`\eta`.
* ``stability-map``: a learning-rate x weight-decay grid of k = 1 / k = 3 pairs trained in
  one ensemble; per cell, whether training diverged, the final loss and accuracy, and ``D``.

Profiles: ``ci`` runs on two CPU cores in CI (digits, a small CNN), ``gpu`` is a reduced
CIFAR-10 run for one GPU, ``paper`` is the paper's scale (ResNet-56, CIFAR-10, 200
epochs, 6 seeds x 6 k). The ``gpu`` and ``paper`` profiles need CIFAR-10 (downloaded
once into the data cache).
"""

from __future__ import annotations

import dataclasses
import math
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from restrained.data import load_dataset
from restrained.ensemble import Members
from restrained.models import build_network
from restrained.train import EnsembleResult, TrainConfig, paper_config, train_ensemble

EXPERIMENTS = ("sensitivity", "divergence", "stability-map")
PROFILES = ("ci", "gpu", "paper")
KS = (1, 3, 5, 7, 9, 11)


@dataclass(frozen=True)
class Spec:
    """One experiment at one profile."""

    dataset: str
    model: str
    train: TrainConfig
    seeds: tuple[int, ...]
    ks: tuple[int, ...] = KS
    learning_rates: tuple[float, ...] = (0.1,)
    weight_decays: tuple[float, ...] = (5e-4,)
    model_kwargs: dict[str, Any] = field(default_factory=dict)
    dataset_kwargs: dict[str, Any] = field(default_factory=dict)
    final_epochs: int = 10  # accuracy = mean over this many last epochs
    divisors: tuple[int, ...] = ()  # divergence: eta = eta_0 / n for n in divisors
    snapshots: int = 0  # divergence: number of records per run
    layer: str = ""  # divergence: the parameter tensor of the per-layer curve


SMALL = {"width": 8, "depth": 2, "activation": "swish"}


def spec(experiment: str, profile: str) -> Spec:
    """The settings of ``experiment`` at ``profile``."""
    if experiment not in EXPERIMENTS:
        raise ValueError(f"experiment must be one of {EXPERIMENTS}, got {experiment!r}")
    if profile not in PROFILES:
        raise ValueError(f"profile must be one of {PROFILES}, got {profile!r}")
    recipe = paper_config()[0]
    six = tuple(range(1, 7))
    if experiment == "sensitivity":
        if profile == "ci":
            cfg = dataclasses.replace(
                recipe, epochs=12, batch_size=64, lr_milestones=(8,), augment=False
            )
            return Spec("digits", "small_cnn", cfg, six, model_kwargs=SMALL, final_epochs=4)
        if profile == "gpu":
            cfg = dataclasses.replace(recipe, epochs=30, lr_milestones=(15, 25))
            return Spec("cifar10", "resnet20", cfg, six, final_epochs=5)
        return Spec("cifar10", "resnet56", recipe, six, final_epochs=10)
    if experiment == "divergence":
        plain = TrainConfig(epochs=1, batch_size=128, momentum=0.0)
        pair = {"seeds": (1,), "ks": (1, 3), "weight_decays": (5e-4,)}
        if profile == "ci":
            return Spec(
                "digits",
                "small_cnn",
                dataclasses.replace(plain, batch_size=64),
                learning_rates=(0.8,),
                model_kwargs=SMALL,
                divisors=(1, 2, 4, 8),
                snapshots=40,
                layer="convs/1/kernel",
                **{**pair, "seeds": (1, 2)},
            )
        # The paper's layer2.5.conv1: stage 2 starts at block 9 of ResNet-56.
        return Spec(
            "cifar10",
            "resnet56",
            plain,
            learning_rates=(0.1,),
            model_kwargs={"activation": "swish"},
            divisors=(2, 4, 8) if profile == "gpu" else (2, 4, 8, 16, 32),
            snapshots=50 if profile == "gpu" else 100,
            layer="blocks/14/conv1/kernel",
            **pair,
        )
    lrs = tuple(0.05 * 2.0**i for i in range(6))
    wds = (0.0, 1e-3, 1e-2, 1e-1)
    if profile == "ci":
        cfg = TrainConfig(epochs=6, batch_size=64, momentum=0.0, per_layer=False)
        return Spec("digits", "small_cnn", cfg, (1,), (1, 3), lrs, wds, SMALL, final_epochs=1)
    cfg = TrainConfig(epochs=10 if profile == "gpu" else 30, batch_size=128, per_layer=False)
    return Spec("cifar10", "resnet20", cfg, (1,), (1, 3), lrs, wds, final_epochs=1)


def _std_table(acc: np.ndarray, members: Members) -> dict[str, Any]:
    """Table 1 statistics from final accuracies (population std, ddof = 0)."""
    seeds, ks = members.unique_seeds, sorted(set(members.ks))
    grid = np.full((len(seeds), len(ks)), np.nan)
    for m in range(members.size):
        grid[seeds.index(members.seeds[m]), ks.index(members.ks[m])] = acc[m]
    across_k = np.std(grid, axis=1)
    across_seeds = np.std(grid, axis=0)
    return {
        "seeds": list(seeds),
        "ks": ks,
        "final_test_accuracy": grid.tolist(),
        "std_across_k_per_seed": across_k.tolist(),
        "std_across_seeds_per_k": across_seeds.tolist(),
        "std_across_k_first_seed": float(across_k[0]),
        "std_across_seeds_k1": float(across_seeds[ks.index(1)]) if 1 in ks else None,
        "mean_std_across_k": float(np.mean(across_k)),
        "mean_accuracy": float(np.mean(grid)),
    }


def _members_summary(result: EnsembleResult) -> dict[str, Any]:
    return {
        "members": result.members.describe(),
        "diverged_step": result.diverged_step.tolist(),
        "history": result.history,
        "steps": result.steps,
        "resumed_from_step": result.resumed_from_step,
        "devices": result.devices,
        "train_wall_time_s": round(result.wall_time_s, 2),
    }


def run(
    experiment: str,
    profile: str,
    *,
    epochs: int | None = None,
    seeds: int | None = None,
    data_dir: str | None = None,
    download: bool = True,
    checkpoint_dir: str | None = None,
    checkpoint_every: int = 0,
    resume: bool = True,
    progress: bool = True,
) -> dict[str, Any]:
    """Run one experiment and return its JSON-ready record (config and metrics)."""
    s = spec(experiment, profile)
    if epochs is not None:
        if epochs < 1:
            raise ValueError(f"epochs must be >= 1, got {epochs}")
        milestones = tuple(m for m in s.train.lr_milestones if m < epochs)
        s = dataclasses.replace(
            s, train=dataclasses.replace(s.train, epochs=epochs, lr_milestones=milestones)
        )
    if seeds is not None:
        if seeds < 1:
            raise ValueError(f"seeds must be >= 1, got {seeds}")
        s = dataclasses.replace(s, seeds=tuple(range(1, seeds + 1)))
    kwargs = dict(s.dataset_kwargs)
    if s.dataset in ("cifar10", "fashion_mnist"):
        kwargs.update(cache_dir=data_dir, download=download)
    data = load_dataset(s.dataset, **kwargs)
    net = build_network(s.model, data.x_train.shape[1:], data.num_classes, **s.model_kwargs)
    started = time.perf_counter()
    record: dict[str, Any] = {
        "experiment": experiment,
        "profile": profile,
        "config": {
            "dataset": data.name,
            "n_train": int(data.x_train.shape[0]),
            "n_test": int(data.x_test.shape[0]),
            "model": s.model,
            "model_kwargs": s.model_kwargs,
            "train": dataclasses.asdict(s.train),
            "seeds": list(s.seeds),
            "ks": list(s.ks),
            "learning_rates": list(s.learning_rates),
            "weight_decays": list(s.weight_decays),
        },
    }
    common = {"progress": progress, "resume": resume}
    if experiment == "sensitivity":
        members = Members.grid(s.seeds, s.ks, s.learning_rates, s.weight_decays)
        cfg = dataclasses.replace(s.train, checkpoint_every=checkpoint_every)
        result = train_ensemble(net, data, members, cfg, checkpoint_dir=checkpoint_dir, **common)
        last = min(s.final_epochs, len(result.history))
        acc = result.final("test_accuracy", last)
        record["config"]["final_epochs"] = last
        record["metrics"] = {"table1": _std_table(acc, members), **_members_summary(result)}
    elif experiment == "divergence":
        runs = []
        steps_per_epoch = data.x_train.shape[0] // s.train.batch_size
        for n in s.divisors:
            lr = s.learning_rates[0] / n
            steps = s.snapshots * n
            cfg = dataclasses.replace(
                s.train,
                epochs=math.ceil(steps / steps_per_epoch),
                record_every=n,
                checkpoint_every=0,
            )
            members = Members.grid(s.seeds, s.ks, (lr,), s.weight_decays)
            result = train_ensemble(net, data, members, cfg, **common)
            trace = [t for t in result.trace if t["step"] <= steps]
            second = [m for m in range(members.size) if members.ks[m] != 1]
            runs.append(
                {
                    "n": n,
                    "learning_rate": lr,
                    "pde_time": [t["step"] * lr for t in trace],
                    "D_mean": [float(np.mean([t["D"][m] for m in second])) for t in trace],
                    "D_layer_mean": [
                        float(np.mean([t["D_layers"][s.layer][m] for m in second])) for t in trace
                    ],
                    "layer": s.layer,
                    "diverged_step": result.diverged_step.tolist(),
                    "final_test_accuracy": result.history[-1]["test_accuracy"],
                    "train_wall_time_s": round(result.wall_time_s, 2),
                }
            )
        record["metrics"] = {"runs": runs}
    else:
        members = Members.grid(s.seeds, s.ks, s.learning_rates, s.weight_decays)
        result = train_ensemble(net, data, members, s.train, **common)
        cells = []
        last = result.history[-1]
        for m in range(members.size):
            if members.ks[m] != 1:
                continue
            twins = [
                j
                for j in range(members.size)
                if members.references[j] == m and j != m and members.ks[j] != 1
            ]
            cells.append(
                {
                    "learning_rate": members.learning_rates[m],
                    "weight_decay": members.weight_decays[m],
                    "seed": members.seeds[m],
                    "diverged": bool(result.diverged_step[m] >= 0),
                    "diverged_step": int(result.diverged_step[m]),
                    "train_loss": last["train_loss"][m],
                    "test_accuracy": last["test_accuracy"][m],
                    "D_k3": float(np.mean([last["D"][j] for j in twins])) if twins else None,
                }
            )
        record["metrics"] = {"cells": cells, **_members_summary(result)}
    record["run_wall_time_s"] = round(time.perf_counter() - started, 2)
    return record
