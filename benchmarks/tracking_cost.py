"""Cost of tracking the sharpness inside the training loop, as a multiple of plain training.

Chapter 7's main run (tanh MLP 64-64 on 1,000 digits, ½-MSE, full-batch GD, lr 0.2) is
timed over the same 1,000 steps without tracking and with the top Hessian eigenvalue
measured every 10 steps by Lanczos (``restrained.sharpness``), warm-started from the
previous eigenvector. Two solver settings are timed: the chapter's (tolerance 1e-4, up to
20 Lanczos steps) and fixed budgets of 3 and 2 Lanczos steps from the warm start (the
first, cold measurement uses the chapter's setting). Tracking does
not change the training trajectory, so the two settings' sharpness records are compared
entry by entry. Everything is compiled before timing; runs alternate, and the best of
``REPEATS`` is kept for each, to damp the noise of a shared machine.

usage: PYTHONPATH=src python benchmarks/tracking_cost.py  (writes results/tracking_cost.json)
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "results"))
import provenance

import restrained
from restrained import eos

ROOT = Path(__file__).resolve().parents[1]
LR, STEPS, TRACK, REPEATS = 0.2, 1000, 10, 5
SOLVERS = {
    "tol 1e-4": {"method": "lanczos", "tol": 1e-4, "max_iters": 20},
    "3 steps": {"method": "lanczos", "tol": 1e-4, "max_iters": 20, "warm_steps": 3},
    "2 steps": {"method": "lanczos", "tol": 1e-4, "max_iters": 20, "warm_steps": 2},
}


def no_tracking(loss_fn, params, warm):
    return float("nan"), warm, 0


def main() -> None:
    print(restrained.setup().summary(), flush=True)
    commit = provenance.git_commit()
    loss_fn, params = eos.mlp_problem(1000, (64, 64))
    configs = {"plain": no_tracking}
    configs.update({name: eos.lobpcg_sharpness(**opts) for name, opts in SOLVERS.items()})
    for fn in configs.values():  # compile every path
        eos.train_gd(loss_fn, params, LR, 2 * TRACK, track_every=TRACK, sharpness_fn=fn)
    times = {name: [] for name in configs}
    runs = {}
    for _ in range(REPEATS):
        for name, fn in configs.items():
            start = time.perf_counter()
            runs[name] = eos.train_gd(
                loss_fn, params, LR, STEPS, track_every=TRACK, sharpness_fn=fn
            )
            times[name].append(time.perf_counter() - start)
    plain = min(times["plain"])
    reference = runs["tol 1e-4"].sharpness
    report = {}
    for name in SOLVERS:
        best = min(times[name])
        rel = np.max(np.abs(runs[name].sharpness - reference) / reference)
        report[name] = {
            "seconds": times[name],
            "ratio_best": best / plain,
            "ratio_median": float(np.median(times[name]) / np.median(times["plain"])),
            "hvps_per_measurement": float(runs[name].hvps.mean()),
            "max_rel_diff_to_tol_1e-4": float(rel),
        }
        print(
            f"{name}: {best:.3f} s vs plain {plain:.3f} s -> ratio {best / plain:.3f}; "
            f"{runs[name].hvps.mean():.1f} HVPs per measurement; "
            f"max relative difference to 'tol 1e-4' {rel:.1e}"
        )
    provenance.write(
        ROOT / "results" / "tracking_cost.json",
        wall_seconds=sum(sum(t) for t in times.values()),
        commit=commit,
        extra={
            "lr": LR,
            "steps": STEPS,
            "track_every": TRACK,
            "repeats": REPEATS,
            "solvers": SOLVERS,
            "plain_seconds": times["plain"],
            "tracked": report,
            "measurements": STEPS // TRACK + 1,
        },
    )


if __name__ == "__main__":
    main()
