r"""Train an ensemble of networks as one compiled program.

:func:`train_ensemble` trains every member of a :class:`~restrained.ensemble.Members`
grid in lockstep: ``jax.vmap`` over the member axis inside one ``jax.jit``-compiled
``lax.scan`` over steps, the member axis sharded over all devices
(:mod:`restrained.sharding`). What the paper's lockstep design needs holds by
construction:

* the members of one seed start from the same weights (drawn from that seed) and see the
  same mini-batches and the same crop-and-flip augmentation (drawn from that seed, the
  epoch and the step), so they differ only by their ``k`` (or learning rate and weight
  decay);
* two ``k = 1`` members of one seed are the same computation and stay bit-identical.

Mini-batches: each epoch is a fresh permutation of the training set, cut into
``N // batch_size`` batches (the last partial batch is dropped; PyTorch's loader keeps
it). Learning rate: multiplied by ``lr_decay`` at each epoch in ``lr_milestones``.

Per epoch it records, per member: training loss and accuracy (running means over the
epoch's mini-batches, in training mode, as the authors' scripts log them), test loss and
accuracy (evaluation mode), and the divergence ``D`` (:func:`restrained.fp.relative_l1`)
between the member and its seed's ``k = 1`` twin, over all weights and per parameter
tensor. A member whose loss, parameters, statistics or momentum become non-finite is
frozen at its last finite state and marked (``diverged_step``); the others go on.

Checkpoints (Orbax) are written every ``checkpoint_every`` steps; a run restarted with
the same configuration and directory resumes from the latest one and ends bit-identical
to an uninterrupted run, because batch order and augmentation are functions of (seed,
epoch, step) and the chunking of steps into compiled scans depends only on absolute step
numbers.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from restrained import sharding
from restrained.augment import crop_and_flip
from restrained.data import Split
from restrained.ensemble import Members, member_sgd, step_table
from restrained.fp import relative_l1
from restrained.models import Network


@dataclass(frozen=True)
class TrainConfig:
    """Everything but the data, the network and the members.

    Attributes:
        epochs: passes over the training set (>= 1).
        batch_size: examples per step, the same for every member.
        momentum, nesterov: the shared momentum recursion (``momentum`` in [0, 1)).
        lr_milestones: epochs at which the learning rate is multiplied by ``lr_decay``.
        augment: crop (pad 4) and flip the training images (2-D data only).
        eval_batch_size: test examples per evaluation batch.
        checkpoint_every: steps between checkpoints (0: none); needs a directory.
        record_every: steps between extra records of ``D`` (0: per epoch only).
        per_layer: also record ``D`` per parameter tensor.
    """

    epochs: int = 10
    batch_size: int = 128
    momentum: float = 0.0
    nesterov: bool = False
    lr_milestones: tuple[int, ...] = ()
    lr_decay: float = 0.1
    augment: bool = False
    eval_batch_size: int = 500
    checkpoint_every: int = 0
    record_every: int = 0
    per_layer: bool = True

    def __post_init__(self) -> None:
        if self.epochs < 1:
            raise ValueError(f"epochs must be >= 1, got {self.epochs}")
        if self.batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {self.batch_size}")
        if not 0.0 <= self.momentum < 1.0:
            raise ValueError(f"momentum must lie in [0, 1), got {self.momentum}")
        if self.nesterov and self.momentum == 0.0:
            raise ValueError("nesterov=True needs momentum in (0, 1), got momentum=0")
        if any(e < 1 for e in self.lr_milestones) or list(self.lr_milestones) != sorted(
            set(self.lr_milestones)
        ):
            raise ValueError(
                f"lr_milestones must be increasing epochs >= 1, got {self.lr_milestones}"
            )
        if not 0.0 < self.lr_decay <= 1.0:
            raise ValueError(f"lr_decay must lie in (0, 1], got {self.lr_decay}")
        if self.eval_batch_size < 1:
            raise ValueError(f"eval_batch_size must be >= 1, got {self.eval_batch_size}")
        if self.checkpoint_every < 0 or self.record_every < 0:
            raise ValueError("checkpoint_every and record_every must be >= 0")


def paper_config(epochs: int = 200, **overrides: Any) -> tuple[TrainConfig, float, float]:
    """The paper's recipe: ``(config, learning_rate, weight_decay)``.

    lr 0.1, Nesterov momentum 0.9, weight decay 5e-4 (on every parameter), batch 128, lr
    divided by 10 at epochs 40, 80, 120 and 160, 200 epochs, crop-and-flip augmentation
    (the authors' ``instability/main6.py``).
    """
    cfg = TrainConfig(
        epochs=epochs,
        batch_size=128,
        momentum=0.9,
        nesterov=True,
        lr_milestones=tuple(m for m in (40, 80, 120, 160) if m < epochs),
        lr_decay=0.1,
        augment=True,
        eval_batch_size=500,
    )
    return dataclasses.replace(cfg, **overrides), 0.1, 5e-4


@dataclass
class EnsembleResult:
    """What :func:`train_ensemble` returns. Arrays have the member axis first."""

    members: Members
    history: list[dict[str, Any]]  # one record per epoch (lists indexed by member)
    trace: list[dict[str, Any]]  # records every ``record_every`` steps
    diverged_step: np.ndarray  # first non-finite step per member, -1 if none
    params: Any  # final parameters (NumPy), member axis first
    stats: Any
    steps: int
    wall_time_s: float
    resumed_from_step: int
    devices: int
    layer_names: list[str] = field(default_factory=list)
    epoch_seconds: list[float] = field(default_factory=list)  # wall time per epoch run here

    def final(self, key: str, last: int = 1) -> np.ndarray:
        """Mean over the last ``last`` epochs of a per-epoch, per-member metric."""
        rows = [h[key] for h in self.history[-last:]]
        return np.mean(np.asarray(rows, np.float64), axis=0)


def layer_names(tree: Any) -> list[str]:
    """Readable names of a parameter pytree's leaves, e.g. ``blocks/3/conv1/kernel``."""
    names = []
    for path, _ in jax.tree_util.tree_flatten_with_path(tree)[0]:
        parts = []
        for key in path:
            for attr in ("key", "idx", "name"):
                if hasattr(key, attr):
                    parts.append(str(getattr(key, attr)))
                    break
        names.append("/".join(p for p in parts if p != "value"))
    return names


def _all_finite(tree: Any) -> jax.Array:
    leaves = jax.tree_util.tree_leaves(tree)
    return jnp.all(jnp.stack([jnp.all(jnp.isfinite(leaf)) for leaf in leaves]))


def _select(keep: jax.Array, new: Any, old: Any) -> Any:
    def pick(a: jax.Array, b: jax.Array) -> jax.Array:
        return jnp.where(keep.reshape(keep.shape + (1,) * (a.ndim - 1)), a, b)

    return jax.tree_util.tree_map(pick, new, old)


def _config_fingerprint(*parts: Any) -> str:
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:16]


def train_ensemble(
    network: Network,
    data: Split,
    members: Members,
    config: TrainConfig,
    *,
    checkpoint_dir: str | Path | None = None,
    resume: bool = True,
    progress: bool = False,
    devices: list | None = None,
    on_checkpoint: Callable[[int], None] | None = None,
) -> EnsembleResult:
    """Train every member of ``members`` in lockstep; see the module docstring.

    Args:
        network: the model (:func:`restrained.models.build_network`).
        data: the dataset; its example shape must be the network's input shape.
        members: the (seed, k, learning rate, weight decay) grid.
        config: training settings.
        checkpoint_dir: where to write Orbax checkpoints (needs ``checkpoint_every``).
        resume: continue from the latest checkpoint there if one exists.
        progress: show a tqdm progress bar.
        devices: devices to shard the members over (default: all).
        on_checkpoint: called with the step number after each checkpoint is written.

    Raises:
        ValueError: for mismatched data and network, a batch larger than the training set,
            or a checkpoint directory that holds a different configuration.
    """
    start_time = time.perf_counter()
    example_shape = tuple(data.x_train.shape[1:])
    if example_shape != network.input_shape:
        raise ValueError(
            f"dataset {data.name!r} gives examples of shape {example_shape}, but the network "
            f"{network.name!r} was built for {network.input_shape}"
        )
    n_train = data.x_train.shape[0]
    if config.batch_size > n_train:
        raise ValueError(f"batch_size must lie in [1, {n_train}], got {config.batch_size}")
    if config.augment and len(example_shape) != 3:
        raise ValueError(f"augment=True needs images (H, W, C), got examples {example_shape}")
    if config.checkpoint_every and checkpoint_dir is None:
        raise ValueError("checkpoint_every > 0 needs a checkpoint_dir")

    steps_per_epoch = n_train // config.batch_size
    total_steps = steps_per_epoch * config.epochs
    n_members = members.size
    mesh = sharding.member_mesh(n_members, devices)
    shard, repl = sharding.member_sharding(mesh), sharding.replicated(mesh)

    # ----------------------------------------------------------------- constants
    x_train = sharding.put(data.x_train.astype(np.float32), repl)
    y_train = sharding.put(data.y_train.astype(np.int32), repl)
    x_test_np, y_test_np = data.x_test.astype(np.float32), data.y_test.astype(np.int32)
    n_test = x_test_np.shape[0]
    eval_bs = min(config.eval_batch_size, n_test)
    n_eval = -(-n_test // eval_bs)
    pad = n_eval * eval_bs - n_test
    x_test = sharding.put(
        np.concatenate([x_test_np, np.zeros((pad, *example_shape), np.float32)]), repl
    )
    y_test = sharding.put(np.concatenate([y_test_np, np.zeros(pad, np.int32)]), repl)
    test_mask = sharding.put(np.arange(n_eval * eval_bs) < n_test, repl)
    pad_value = np.asarray(data.pad_value if data.pad_value is not None else 0.0, np.float32)

    n_phases = len(config.lr_milestones) + 1
    steps_by_phase = step_table(members, n_phases, config.lr_decay)
    member_k = sharding.put(np.asarray(members.ks, np.float32), shard)
    member_wd = sharding.put(np.asarray(members.weight_decays, np.float32), shard)
    seed_slot = sharding.put(members.seed_slots, shard)
    refs = members.references
    ref_index = sharding.put(np.where(refs >= 0, refs, np.arange(n_members)).astype(np.int32), repl)
    use_wd = any(wd > 0 for wd in members.weight_decays)
    seed_keys = jnp.stack([jax.random.PRNGKey(s) for s in members.unique_seeds])
    split_keys = jax.vmap(lambda k: jax.random.split(k, 3))(seed_keys)  # (seeds, 3, 2)
    data_keys = sharding.put(np.asarray(split_keys[:, 1]), repl)
    aug_keys = sharding.put(np.asarray(split_keys[:, 2]), repl)

    # ------------------------------------------------------------- initial state
    inits = [network.init(split_keys[i, 0]) for i in range(len(members.unique_seeds))]
    slots = members.seed_slots

    def stack_members(*leaves: Any) -> np.ndarray:
        return np.stack([np.asarray(leaf) for leaf in leaves])[slots]

    params0 = jax.tree_util.tree_map(stack_members, *[p for p, _ in inits])
    stats0 = jax.tree_util.tree_map(stack_members, *[s for _, s in inits])
    names = layer_names(params0)
    zeros = jnp.zeros(n_members, jnp.float32)
    state = {
        "params": sharding.put(params0, shard),
        "stats": sharding.put(stats0, shard),
        "momentum": sharding.put(
            jax.tree_util.tree_map(np.zeros_like, params0) if config.momentum > 0 else {}, shard
        ),
        "alive": sharding.put(np.ones(n_members, bool), shard),
        "diverged_step": sharding.put(np.full(n_members, -1, np.int32), shard),
        "loss_sum": sharding.put(zeros, shard),
        "correct_sum": sharding.put(zeros, shard),
        "step": sharding.put(np.zeros((), np.int32), repl),
    }
    state_shardings = jax.tree_util.tree_map(lambda a: a.sharding, state)

    # ------------------------------------------------------------------ one step
    def member_step(params, stats, buf, x, y, first, step_size, k, wd):
        (loss, (logits, new_stats)), grads = jax.value_and_grad(network.loss, has_aux=True)(
            params, stats, x, y, True
        )
        new_params, new_buf = member_sgd(
            grads,
            buf,
            params,
            first,
            step_size,
            k,
            wd,
            momentum=config.momentum,
            nesterov=config.nesterov,
            use_weight_decay=use_wd,
        )
        finite = jnp.isfinite(loss) & _all_finite((new_params, new_stats, new_buf))
        correct = jnp.sum(jnp.argmax(logits, -1) == y).astype(jnp.float32)
        return new_params, new_stats, new_buf, loss, correct, finite

    vstep = jax.vmap(member_step, in_axes=(0, 0, 0, 0, 0, None, 0, 0, 0))

    def batch_for(epoch: jax.Array, i: jax.Array, perms: jax.Array):
        idx = jax.lax.dynamic_slice_in_dim(perms, i * config.batch_size, config.batch_size, 1)
        xb, yb = x_train[idx], y_train[idx]  # (seeds, B, ...)
        if config.augment:
            keys = jax.vmap(lambda k: jax.random.fold_in(jax.random.fold_in(k, epoch), i))(aug_keys)
            xb = jax.vmap(lambda k, x: crop_and_flip(k, x, 4, pad_value))(keys, xb)
        return xb[seed_slot], yb[seed_slot]

    def run_chunk(state, epoch, first_step_in_epoch, step_sizes, n_steps):
        perms = jax.vmap(lambda k: jax.random.permutation(jax.random.fold_in(k, epoch), n_train))(
            data_keys
        )

        def body(st, i):
            xb, yb = batch_for(epoch, first_step_in_epoch + i, perms)
            p, s, b, loss, correct, finite = vstep(
                st["params"],
                st["stats"],
                st["momentum"],
                xb,
                yb,
                st["step"] == 0,
                step_sizes,
                member_k,
                member_wd,
            )
            alive = st["alive"] & finite
            newly_dead = st["alive"] & ~finite
            new = dict(st)
            new["params"] = _select(alive, p, st["params"])
            new["stats"] = _select(alive, s, st["stats"])
            new["momentum"] = _select(alive, b, st["momentum"])
            new["alive"] = alive
            new["diverged_step"] = jnp.where(newly_dead, st["step"], st["diverged_step"])
            new["loss_sum"] = st["loss_sum"] + jnp.where(alive, loss, 0.0)
            new["correct_sum"] = st["correct_sum"] + jnp.where(alive, correct, 0.0)
            new["step"] = st["step"] + 1
            return new, None

        state, _ = jax.lax.scan(body, state, jnp.arange(n_steps))
        return state

    compiled_chunks: dict[int, Callable] = {}

    def chunk_fn(n_steps: int) -> Callable:
        if n_steps not in compiled_chunks:
            compiled_chunks[n_steps] = jax.jit(
                lambda st, e, i0, ss: run_chunk(st, e, i0, ss, n_steps),
                out_shardings=state_shardings,
                donate_argnums=0,
            )
        return compiled_chunks[n_steps]

    # ---------------------------------------------------------------- evaluation
    def eval_member(params, stats):
        def body(carry, j):
            xb = jax.lax.dynamic_slice_in_dim(x_test, j * eval_bs, eval_bs)
            yb = jax.lax.dynamic_slice_in_dim(y_test, j * eval_bs, eval_bs)
            mb = jax.lax.dynamic_slice_in_dim(test_mask, j * eval_bs, eval_bs)
            logits, _ = network.apply(params, stats, xb, False)
            logp = jax.nn.log_softmax(logits)
            nll = -jnp.take_along_axis(logp, yb[:, None], axis=1)[:, 0]
            hit = jnp.argmax(logits, -1) == yb
            loss_sum = carry[0] + jnp.sum(jnp.where(mb, nll, 0.0))
            return (loss_sum, carry[1] + jnp.sum(hit & mb)), None

        (loss, correct), _ = jax.lax.scan(body, (0.0, 0), jnp.arange(n_eval))
        return loss / n_test, correct / n_test

    def divergences(params):
        twin = jax.tree_util.tree_map(lambda a: a[ref_index], params)
        total = jax.vmap(relative_l1)(params, twin)
        if not config.per_layer:
            return total, []
        per = [
            jax.vmap(relative_l1)(a, b)
            for a, b in zip(
                jax.tree_util.tree_leaves(params), jax.tree_util.tree_leaves(twin), strict=True
            )
        ]
        return total, per

    @jax.jit
    def epoch_metrics(state):
        test_loss, test_acc = jax.vmap(eval_member)(state["params"], state["stats"])
        total, per = divergences(state["params"])
        return test_loss, test_acc, total, per

    @jax.jit
    def trace_metrics(state):
        return divergences(state["params"])

    # ------------------------------------------------------------ checkpointing
    fingerprint = _config_fingerprint(
        network.name,
        network.input_shape,
        data.name,
        data.x_train.shape,
        members.describe(),
        dataclasses.asdict(config),
    )
    manager = None
    history: list[dict[str, Any]] = []
    trace: list[dict[str, Any]] = []
    resumed_from = 0
    if checkpoint_dir is not None:
        from restrained import checkpoint

        manager = checkpoint.Manager(Path(checkpoint_dir))
        if not resume and manager.latest_step() is not None:
            raise ValueError(
                f"checkpoint_dir {checkpoint_dir} already holds checkpoints and resume=False; "
                "use a fresh directory"
            )
        if resume and manager.latest_step() is not None:
            if manager.metadata().get("fingerprint") != fingerprint:
                raise ValueError(
                    f"checkpoint_dir {checkpoint_dir} holds a run with another configuration; "
                    "use a fresh directory or resume=False"
                )
            state, meta = manager.restore(state)
            history, trace = meta["history"], meta["trace"]
            resumed_from = int(np.asarray(sharding.fetch(state["step"])))

    # -------------------------------------------------------------- main loop
    from tqdm.auto import tqdm

    bar = tqdm(
        total=total_steps,
        initial=resumed_from,
        disable=not progress,
        desc=f"{network.name} x{n_members}",
        unit="step",
    )
    step = resumed_from
    epoch_seconds: list[float] = []
    epoch_started = time.perf_counter()
    try:
        while step < total_steps:
            epoch, in_epoch = divmod(step, steps_per_epoch)
            end = (epoch + 1) * steps_per_epoch
            for every in (config.checkpoint_every, config.record_every):
                if every:
                    end = min(end, (step // every + 1) * every)
            phase = sum(1 for m in config.lr_milestones if epoch >= m)
            state = chunk_fn(end - step)(
                state,
                jnp.int32(epoch),
                jnp.int32(in_epoch),
                sharding.put(steps_by_phase[phase], shard),
            )
            bar.update(end - step)
            step = end
            if config.record_every and step % config.record_every == 0:
                total, per = sharding.fetch(trace_metrics(state))
                record = {"step": step, "D": total.tolist()}
                if config.per_layer:
                    record["D_layers"] = {n: v.tolist() for n, v in zip(names, per, strict=True)}
                trace.append(record)
            if step % steps_per_epoch == 0:
                test_loss, test_acc, total, per = sharding.fetch(epoch_metrics(state))
                sums = sharding.fetch({k: state[k] for k in ("loss_sum", "correct_sum")})
                n_seen = steps_per_epoch * config.batch_size
                record = {
                    "epoch": epoch + 1,
                    "step": step,
                    "learning_rate_phase": phase,
                    "train_loss": (sums["loss_sum"] / steps_per_epoch).tolist(),
                    "train_accuracy": (sums["correct_sum"] / n_seen).tolist(),
                    "test_loss": test_loss.tolist(),
                    "test_accuracy": test_acc.tolist(),
                    "D": total.tolist(),
                }
                if config.per_layer:
                    record["D_layers"] = {n: v.tolist() for n, v in zip(names, per, strict=True)}
                history.append(record)
                state["loss_sum"] = sharding.put(np.zeros(n_members, np.float32), shard)
                state["correct_sum"] = sharding.put(np.zeros(n_members, np.float32), shard)
                epoch_seconds.append(time.perf_counter() - epoch_started)
                epoch_started = time.perf_counter()
            if (
                manager is not None
                and config.checkpoint_every
                and step % config.checkpoint_every == 0
            ):
                manager.save(
                    step, state, {"fingerprint": fingerprint, "history": history, "trace": trace}
                )
                if on_checkpoint is not None:
                    on_checkpoint(step)
    finally:
        bar.close()
        if manager is not None:
            manager.close()
    final = sharding.fetch({k: state[k] for k in ("params", "stats", "diverged_step")})
    return EnsembleResult(
        members=members,
        history=history,
        trace=trace,
        diverged_step=final["diverged_step"],
        params=final["params"],
        stats=final["stats"],
        steps=step,
        wall_time_s=time.perf_counter() - start_time,
        resumed_from_step=resumed_from,
        devices=int(mesh.devices.size),
        layer_names=names,
        epoch_seconds=epoch_seconds,
    )
