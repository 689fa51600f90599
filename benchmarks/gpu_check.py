"""GPU check of the experiment engine; writes ``<out>/gpu_check.json`` after every section.

Sections, run in the order 4, 1, 2, 3 (each guarded by a time budget; a failure is
recorded, not fatal):

1. ``resnet20_throughput``: ResNet-20 on CIFAR-shaped synthetic data, steady-state
   images/s of one model and of a vmapped ensemble (the same per-member work), and the
   ratio. Sequential runs of single models have the single model's throughput.
2. ``determinism``: the ResNet-20 ensemble run of section 1, repeated (deterministic XLA
   ops on), must give bit-identical parameters. The repeat reuses the compiled program
   from JAX's persistent compilation cache, so it tests the execution, not autotuning
   (which the deterministic-ops flag switches off anyway).
3. ``tf32_vs_highest``: the same run under JAX's default precision (TF32 for float32
   convolutions and products on Ampere/Hopper GPUs) must give different
   parameters from the highest-precision run (the book's point: hidden precision
   switches move more than the last bit).
4. ``resnet56_36_members``: a 36-member ResNet-56 ensemble (6 seeds x 6 k, the paper's
   Table 1 design), float32 at highest precision; steady-state images/s and the projected
   wall time of the ``paper`` profile (200 epochs of CIFAR-10 for all 36 members).

No internet is needed: the data are synthetic (:func:`restrained.data.synthetic_images`),
with a 5:1 train/test ratio like CIFAR-10 so that evaluation is costed in proportion.
``--tiny`` shrinks everything for a CPU smoke test.
"""

from __future__ import annotations

import argparse
import json
import time
import traceback
from pathlib import Path

import restrained

CIFAR_TRAIN, PAPER_EPOCHS, KS = 50_000, 200, (1, 3, 5, 7, 9, 11)


def main() -> None:
    parser = argparse.ArgumentParser(description="GPU check of the experiment engine")
    parser.add_argument("--out", type=Path, required=True, help="directory for gpu_check.json")
    parser.add_argument("--tiny", action="store_true", help="tiny sizes for a CPU smoke test")
    parser.add_argument("--budget-s", type=float, default=330.0, help="skip sections after this")
    args = parser.parse_args()
    t0 = time.perf_counter()
    info = restrained.setup()
    import jax
    import numpy as np

    # Identical programs (the repeat in section 2) compile once.
    jax.config.update("jax_compilation_cache_dir", "/tmp/restrained-xla-cache")
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.5)

    from restrained.data import synthetic_images
    from restrained.ensemble import Members
    from restrained.models import build_network
    from restrained.provenance import provenance
    from restrained.train import TrainConfig, train_ensemble

    tiny = args.tiny
    batch = 16 if tiny else 128
    steps = 3 if tiny else 20  # steps per epoch
    size = 8 if tiny else 32
    n_train = batch * steps
    data = synthetic_images(n_train, n_train // 5, (size, size, 3), seed=0)
    report: dict = {"setup": info.summary(), "tiny": tiny, "sections": {}}
    args.out.mkdir(parents=True, exist_ok=True)
    path = args.out / "gpu_check.json"

    def save() -> None:
        report["provenance"] = provenance(time.perf_counter() - t0)
        path.write_text(json.dumps(report, indent=1) + "\n")

    def config(epochs: int) -> TrainConfig:
        return TrainConfig(
            epochs=epochs,
            batch_size=batch,
            momentum=0.9,
            nesterov=True,
            augment=True,
            eval_batch_size=256 if not tiny else 500,
            per_layer=False,
        )

    def steady_rate(result, members: int) -> float:
        """Member-images per second over the epochs after the first (which compiles)."""
        seconds = sum(result.epoch_seconds[1:])
        return members * n_train * (len(result.epoch_seconds) - 1) / seconds

    def params_of(result) -> list:
        return [np.asarray(a) for a in jax.tree_util.tree_leaves(result.params)]

    def section(name: str, fn) -> None:
        elapsed = time.perf_counter() - t0
        if elapsed > args.budget_s:
            report["sections"][name] = {"skipped": f"time budget spent ({elapsed:.0f} s)"}
        else:
            started = time.perf_counter()
            try:
                report["sections"][name] = fn()
            except Exception:  # a failed section is a result to report, not a crash
                report["sections"][name] = {"error": traceback.format_exc()[-3000:]}
            report["sections"][name]["section_wall_s"] = round(time.perf_counter() - started, 1)
        print(name, json.dumps(report["sections"][name])[:400], flush=True)
        save()

    r20 = build_network("resnet20", (size, size, 3))

    n_ensemble = 6 if tiny else 12
    ensemble_members = Members.grid(range(1, n_ensemble // 6 + 1), KS)
    runs: dict = {}

    def throughput() -> dict:
        one = train_ensemble(r20, data, Members.grid([1], [1]), config(3))
        runs["highest"] = train_ensemble(r20, data, ensemble_members, config(3))
        single, ensemble = steady_rate(one, 1), steady_rate(runs["highest"], n_ensemble)
        return {
            "members": n_ensemble,
            "single_images_per_s": round(single, 1),
            "ensemble_images_per_s": round(ensemble, 1),
            "ratio": round(ensemble / single, 2),
            "first_epoch_s": [
                round(one.epoch_seconds[0], 1),
                round(runs["highest"].epoch_seconds[0], 1),
            ],
        }

    def same(a, b) -> bool:
        return all(np.array_equal(x, y) for x, y in zip(params_of(a), params_of(b), strict=True))

    def determinism() -> dict:
        first = runs.get("highest") or train_ensemble(r20, data, ensemble_members, config(3))
        runs["highest"] = first
        again = train_ensemble(r20, data, ensemble_members, config(3))
        k_differs = any(not np.array_equal(x[0], x[1]) for x in params_of(first))
        return {
            "bit_identical": bool(same(first, again)),
            "k3_differs_from_k1": bool(k_differs),
            "repeat_first_epoch_s": round(again.epoch_seconds[0], 1),
        }

    def tf32() -> dict:
        # JAX's out-of-the-box precision: float32 convolutions and products in TF32 on
        # Ampere and Hopper GPUs (on CPU it changes nothing).
        with jax.default_matmul_precision("default"):
            loose = train_ensemble(r20, data, ensemble_members, config(3))
        highest = runs.get("highest") or train_ensemble(r20, data, ensemble_members, config(3))
        pairs = list(zip(params_of(loose), params_of(highest), strict=True))
        rel = max(float(np.max(np.abs(x - y)) / (np.max(np.abs(y)) + 1e-30)) for x, y in pairs)
        acc = [loose.history[-1]["test_accuracy"], highest.history[-1]["test_accuracy"]]
        return {
            "loose_precision": "default (TF32 on Ampere/Hopper)",
            "tf32_differs_from_highest": not same(loose, highest),
            "max_relative_difference": rel,
            "tf32_images_per_s": round(steady_rate(loose, n_ensemble), 1),
            "final_test_accuracy_tf32_vs_highest": acc,
        }

    def resnet56() -> dict:
        r56 = build_network("resnet56", (size, size, 3))
        seeds = 1 if tiny else 6
        result = train_ensemble(r56, data, Members.grid(range(1, seeds + 1), KS), config(2))
        members = 6 * seeds
        rate = steady_rate(result, members)
        epoch_s = result.epoch_seconds[1] * CIFAR_TRAIN / n_train
        projected_h = PAPER_EPOCHS * epoch_s / 3600 * (36 / members)
        return {
            "members": members,
            "images_per_s": round(rate, 1),
            "first_epoch_s": round(result.epoch_seconds[0], 1),
            "projected_cifar10_epoch_s": round(epoch_s, 1),
            "projected_paper_profile_hours": round(projected_h, 2),
            "goal_hours": 3.0,
            "diverged": int((result.diverged_step >= 0).sum()),
        }

    # The paper-scale projection first: it matters most if time runs short.
    for name, fn in (
        ("resnet56_36_members", resnet56),
        ("resnet20_throughput", throughput),
        ("determinism", determinism),
        ("tf32_vs_highest", tf32),
    ):
        section(name, fn)
    save()
    print(f"wrote {path} in {time.perf_counter() - t0:.0f} s")


if __name__ == "__main__":
    main()
