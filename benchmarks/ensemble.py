"""Throughput of a vmapped 12-member ensemble against 12 sequential single-model runs.

Both do the same total work: the 12 (seed, k) members of the CI sensitivity setting
(digits, the small CNN, Nesterov SGD, batch 64) for the same number of epochs, through
the same code path (:func:`restrained.train.train_ensemble`, once with 12 members, then
12 times with one member). Two ratios are printed:

* end to end: total wall time of the 12 single runs over that of the ensemble run,
  compilation included (each single run compiles its own program, as separate runs do);
* steady state: images per second after the first epoch (compilation excluded), of the
  ensemble over one single-model run.

Usage: ``PYTHONPATH=src python benchmarks/ensemble.py [--epochs 4] [--json out.json]``.
"""

from __future__ import annotations

import argparse
import json
import time

import restrained


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=4, help="epochs per run (>= 2)")
    parser.add_argument("--members", type=int, default=12, help="ensemble size (6 k per seed)")
    parser.add_argument("--conv-impl", default="auto", choices=("auto", "lax", "matmul"))
    parser.add_argument("--json", help="also write the figures to this file")
    args = parser.parse_args()
    if args.epochs < 2:
        parser.error("--epochs must be >= 2 (the first epoch includes compilation)")
    restrained.setup()
    from restrained.data import load_digits
    from restrained.ensemble import Members
    from restrained.models import build_network
    from restrained.provenance import provenance
    from restrained.train import TrainConfig, train_ensemble

    data = load_digits()
    net = build_network(
        "small_cnn", (8, 8, 1), width=8, depth=2, activation="swish", conv_impl=args.conv_impl
    )
    config = TrainConfig(
        epochs=args.epochs, batch_size=64, momentum=0.9, nesterov=True, lr_milestones=()
    )
    ks = (1, 3, 5, 7, 9, 11)
    seeds = range(1, -(-args.members // len(ks)) + 1)
    grid = Members.grid(seeds, ks, (0.1,), (5e-4,))
    fields = (grid.seeds, grid.ks, grid.learning_rates, grid.weight_decays)
    members = Members(*(t[: args.members] for t in fields))
    images_per_epoch = (data.x_train.shape[0] // config.batch_size) * config.batch_size

    started = time.perf_counter()
    ensemble = train_ensemble(net, data, members, config)
    ensemble_wall = time.perf_counter() - started

    single_walls, single_steady = [], []
    for m in range(members.size):
        one = Members(
            (members.seeds[m],), (members.ks[m],), (members.learning_rates[m],),
            (members.weight_decays[m],),
        )  # fmt: skip
        started = time.perf_counter()
        result = train_ensemble(net, data, one, config)
        single_walls.append(time.perf_counter() - started)
        single_steady.append(sum(result.epoch_seconds[1:]))

    steady_images = images_per_epoch * (args.epochs - 1)
    ensemble_rate = members.size * steady_images / sum(ensemble.epoch_seconds[1:])
    single_rate = members.size * steady_images / sum(single_steady)
    figures = {
        "members": members.size,
        "epochs": args.epochs,
        "conv_impl": args.conv_impl,
        "ensemble_wall_s": round(ensemble_wall, 2),
        "sequential_wall_s": round(sum(single_walls), 2),
        "end_to_end_ratio": round(sum(single_walls) / ensemble_wall, 2),
        "ensemble_steady_images_per_s": round(ensemble_rate, 1),
        "sequential_steady_images_per_s": round(single_rate, 1),
        "steady_state_ratio": round(ensemble_rate / single_rate, 2),
    }
    for key, value in figures.items():
        print(f"{key:32s} {value}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"figures": figures, "provenance": provenance()}, f, indent=1)


if __name__ == "__main__":
    main()
