"""Cost of tracking the sharpness inside the training loop, as a multiple of plain training.

Chapter 7's main run (tanh MLP 64-64 on 1,000 digits, ½-MSE, full-batch GD, lr 0.2) is
timed twice over the same steps: without tracking, and with the top Hessian eigenvalue
measured every 10 steps by warm-started Lanczos (``restrained.sharpness``). Both use the same
jitted 10-step chunks, compiled before timing. Runs alternate, and the best of ``REPEATS``
is kept for each, to damp the noise of a shared machine.

usage: PYTHONPATH=src python benchmarks/tracking_cost.py  (writes results/tracking_cost.json)
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import numpy as np

import restrained
from restrained import eos

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "results"))
import provenance

ROOT = Path(__file__).resolve().parents[1]

LR, STEPS, TRACK, REPEATS = 0.2, 1000, 10, 5
SOLVER = {"method": "lanczos", "tol": 1e-4, "max_iters": 20}


def no_tracking(loss_fn, params, warm):
    return float("nan"), warm, 0


def main() -> None:
    print(restrained.setup().summary(), flush=True)
    loss_fn, params = eos.mlp_problem(1000, (64, 64))
    tracked_fn = eos.lobpcg_sharpness(**SOLVER)
    for fn in (no_tracking, tracked_fn):  # compile both paths
        eos.train_gd(loss_fn, params, LR, 2 * TRACK, track_every=TRACK, sharpness_fn=fn)
    times = {"plain": [], "tracked": []}
    hvps = 0
    for _ in range(REPEATS):
        for name, fn in (("plain", no_tracking), ("tracked", tracked_fn)):
            start = time.perf_counter()
            run = eos.train_gd(loss_fn, params, LR, STEPS, track_every=TRACK, sharpness_fn=fn)
            times[name].append(time.perf_counter() - start)
            if name == "tracked":
                hvps = int(run.hvps.sum())
    plain, tracked = min(times["plain"]), min(times["tracked"])
    ratio = tracked / plain
    print(f"plain {plain:.3f} s, tracked {tracked:.3f} s, ratio {ratio:.3f}")
    print(f"{hvps} Hessian-vector products for {STEPS // TRACK + 1} measurements")
    provenance.write(
        ROOT / "results" / "tracking_cost.json",
        wall_seconds=sum(times["plain"]) + sum(times["tracked"]),
        extra={
            "lr": LR, "steps": STEPS, "track_every": TRACK, "repeats": REPEATS,
            "solver": SOLVER, "plain_seconds": times["plain"], "tracked_seconds": times["tracked"],
            "ratio_best": ratio, "ratio_median": float(
                np.median(times["tracked"]) / np.median(times["plain"])),
            "hvps": hvps, "measurements": STEPS // TRACK + 1,
        },
    )  # fmt: skip


if __name__ == "__main__":
    main()
