"""Chapter 7's Edge-of-Stability runs: full-batch GD on a tanh MLP on 1,000 digits, ½-MSE.

Every run tracks the top Hessian eigenvalue of the loss every ``TRACK`` steps with
:func:`restrained.sharpness.top_hessian_eigs` (Lanczos, warm-started from the previous
eigenvector). Groups of runs:

* ``main``: learning rates 0.16, 0.2, 0.25, each with a k = 3 twin (the divergence D);
* ``flow``: GD against an RK4 gradient flow at lr 0.2;
* ``depth``: 1 to 4 hidden layers of width 64 at lr 0.2;
* ``wd``: weight decay 0, 0.003, 0.01, 0.03, 0.1 at lr 0.2;
* ``momentum``: heavy ball (lr, β) = (0.3, 0.5) and (0.35, 0.75);
* ``grid``: the slider grid, lr x weight decay.

usage (from the repository root): PYTHONPATH=src python results/eos_experiments.py [GROUP ...]
writes results/eos_experiments.npz and results/eos_experiments.json. With group names, only
those groups are recomputed and replaced in the existing files; the JSON keeps a record of
each group's command, commit and wall time.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import numpy as np

import restrained
from restrained import eos

sys.path.insert(0, str(Path(__file__).resolve().parent))
import provenance

OUT = Path(__file__).resolve().parent / "eos_experiments"
N_EXAMPLES, HIDDEN, TRACK = 1000, (64, 64), 10
SOLVER = {"method": "lanczos", "tol": 1e-4, "max_iters": 20}
MAIN_LRS, MAIN_STEPS = (0.16, 0.2, 0.25), 4000
FLOW_LR, FLOW_STEPS, FLOW_SUBSTEPS = 0.2, 2500, 4
DEPTHS, DEPTH_STEPS = (1, 2, 3, 4), 3000
WDS, WD_STEPS = (0.0, 0.003, 0.01, 0.03, 0.1), 3000
MOMENTA, MOMENTUM_STEPS = ((0.3, 0.5), (0.35, 0.75)), 3000
GRID_LRS, GRID_WDS, GRID_STEPS = (0.1, 0.15, 0.2, 0.25), (0.0, 0.003, 0.01, 0.03), 2000


def record(prefix: str, run: eos.GDRun, out: dict) -> None:
    out[f"{prefix}/loss"] = run.loss
    out[f"{prefix}/tracked_steps"] = run.tracked_steps
    out[f"{prefix}/sharpness"] = run.sharpness
    out[f"{prefix}/hvps"] = run.hvps
    out[f"{prefix}/config"] = np.array([run.lr, run.weight_decay, run.momentum, run.diverged_at])
    if run.divergence is not None:
        out[f"{prefix}/divergence"] = run.divergence
        out[f"{prefix}/separation"] = run.separation


def run_main(loss_fn, params, sharpness, out):
    for lr in MAIN_LRS:
        run = eos.train_gd(loss_fn, params, lr, MAIN_STEPS, twin_k=3, sharpness_fn=sharpness)
        record(f"main/{lr}", run, out)


def run_flow(loss_fn, params, sharpness, out):
    flow = eos.gradient_flow_distance(
        loss_fn, params, FLOW_LR, FLOW_STEPS, every=TRACK, substeps=FLOW_SUBSTEPS
    )
    out["flow/steps"], out["flow/distance"] = flow.steps, flow.distance
    out["flow/relative"], out["flow/flow_loss"] = flow.relative, flow.flow_loss


def run_depth(loss_fn, params, sharpness, out):
    for depth in DEPTHS:
        loss_d, params_d = eos.mlp_problem(N_EXAMPLES, (64,) * depth)
        run = eos.train_gd(
            loss_d, params_d, 0.2, DEPTH_STEPS, sharpness_fn=eos.lobpcg_sharpness(**SOLVER)
        )
        record(f"depth/{depth}", run, out)


def run_wd(loss_fn, params, sharpness, out):
    for wd in WDS:
        run = eos.train_gd(loss_fn, params, 0.2, WD_STEPS, weight_decay=wd, sharpness_fn=sharpness)
        record(f"wd/{wd}", run, out)


def run_momentum(loss_fn, params, sharpness, out):
    for lr, mu in MOMENTA:
        run = eos.train_gd(loss_fn, params, lr, MOMENTUM_STEPS, momentum=mu, sharpness_fn=sharpness)
        record(f"momentum/{lr}/{mu}", run, out)


def run_grid(loss_fn, params, sharpness, out):
    for lr in GRID_LRS:
        for wd in GRID_WDS:
            run = eos.train_gd(
                loss_fn, params, lr, GRID_STEPS, weight_decay=wd, track_every=20,
                sharpness_fn=sharpness,
            )  # fmt: skip
            record(f"grid/{lr}/{wd}", run, out)


GROUPS = {
    "main": run_main,
    "flow": run_flow,
    "depth": run_depth,
    "wd": run_wd,
    "momentum": run_momentum,
    "grid": run_grid,
}


def main(groups: list[str]) -> None:
    unknown = sorted(set(groups) - set(GROUPS))
    if unknown:
        raise ValueError(f"unknown groups {unknown}; choose from {sorted(GROUPS)}")
    groups = groups or list(GROUPS)
    print(restrained.setup().summary(), flush=True)
    commit = provenance.git_commit()
    sharpness = eos.lobpcg_sharpness(**SOLVER)
    loss_fn, params = eos.mlp_problem(N_EXAMPLES, HIDDEN)
    npz, meta = OUT.with_suffix(".npz"), OUT.with_suffix(".json")
    partial = len(groups) < len(GROUPS)
    out = dict(np.load(npz)) if partial and npz.exists() else {}
    history = json.loads(meta.read_text()).get("groups", {}) if partial and meta.exists() else {}
    start = time.perf_counter()
    for name in groups:
        t0 = time.perf_counter()
        for key in [k for k in out if k.startswith(f"{name}/")]:
            del out[key]
        GROUPS[name](loss_fn, params, sharpness, out)
        history[name] = {
            "command": "PYTHONPATH=src python " + " ".join(sys.argv),
            "commit": commit,
            "wall_seconds": round(time.perf_counter() - t0, 1),
        }
        print(f"{name}: {time.perf_counter() - t0:.0f} s", flush=True)
    wall = time.perf_counter() - start
    np.savez_compressed(npz, **out)
    settings = {
        "n_examples": N_EXAMPLES,
        "hidden": HIDDEN,
        "track_every": TRACK,
        "solver": SOLVER,
        "main": [MAIN_LRS, MAIN_STEPS],
        "flow": [FLOW_LR, FLOW_STEPS, FLOW_SUBSTEPS],
        "depths": [DEPTHS, DEPTH_STEPS],
        "wds": [WDS, WD_STEPS],
        "momenta": [MOMENTA, MOMENTUM_STEPS],
        "grid": [GRID_LRS, GRID_WDS, GRID_STEPS],
        "groups": history,
    }
    print(provenance.write(meta, wall_seconds=wall, extra=settings, commit=commit))


if __name__ == "__main__":
    main(sys.argv[1:])
