"""Chapter 5's table: sharpness and largest stable learning rate of small CNNs vs depth.

For depth 1..6 and width 4 and 8, runs :func:`restrained.sharpness.depth_study_row` on the
first 256 training digits and writes ``results/deep_stability.json`` with provenance (git
commit, versions, command, wall time). The notebook ``05_deep_cnns`` loads the file and
recomputes the first row live to check that it is reproduced.

Usage: PYTHONPATH=src python scripts/deep_stability.py [--out results/deep_stability.json]
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import json
import platform
import subprocess
import sys
import time

import restrained

INFO = restrained.setup()

import jax.numpy as jnp  # noqa: E402

from restrained import sharpness  # noqa: E402
from restrained.data import load_digits  # noqa: E402

NUM_EXAMPLES = 256
DEPTHS = (1, 2, 3, 4, 5, 6)
WIDTHS = (4, 8)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="results/deep_stability.json")
    args = parser.parse_args()
    split = load_digits()
    images = jnp.asarray(split.x_train[:NUM_EXAMPLES])
    labels = jnp.asarray(split.y_train[:NUM_EXAMPLES])
    start = time.perf_counter()
    rows = []
    for width in WIDTHS:
        for depth in DEPTHS:
            t0 = time.perf_counter()
            row = sharpness.depth_study_row(depth, width, images, labels)
            rows.append(dataclasses.asdict(row))
            print(
                f"width {width} depth {depth}: sharpness {row.sharpness_init:.4g} -> "
                f"{row.sharpness_trained:.4g}, predicted {row.predicted_lr:.4g}, measured "
                f"({row.measured_lr_lower:.4g}, {row.measured_lr_upper:.4g}] "
                f"[{time.perf_counter() - t0:.0f} s]",
                flush=True,
            )
    commit = subprocess.run(
        ["git", "rev-parse", "HEAD"], capture_output=True, text=True, check=False
    ).stdout.strip()
    provenance = {
        "script": "scripts/deep_stability.py",
        "command": " ".join([sys.executable.split("/")[-1], *sys.argv]),
        "git_commit": commit,
        "date_utc": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "runtime": INFO.summary(),
        "machine": platform.platform(),
        "wall_seconds": round(time.perf_counter() - start, 1),
        "data": f"first {NUM_EXAMPLES} training digits of restrained.data.load_digits()",
        "defaults": "depth_study_row defaults: weight_decay 1e-2, 400 Adam steps at 3e-3, "
        "12 log-bisections in [1e-3, 1e2], 20 GD steps per test",
    }
    with open(args.out, "w") as fh:
        json.dump({"provenance": provenance, "rows": rows}, fh, indent=1)
    print(f"wrote {args.out} in {provenance['wall_seconds']} s")


if __name__ == "__main__":
    main()
