r"""Two copies of one network trained in lockstep: plain SGD against the k-trick.

This is the opening experiment of the book in its smallest form. Both copies start from
the same parameters and see the same mini-batches; copy A applies its update as
:math:`\eta d`, copy B as :math:`(\eta k)(d/k)` (:func:`restrained.optim.perturbed_sgd`).
In exact arithmetic they are the same run. The record follows them in *PDE time*
:math:`t = \eta \cdot \text{step}`, so runs with different learning rates can be compared
at equal :math:`t`.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

from restrained.data import load_digits
from restrained.fp import relative_l1
from restrained.models import Apply, Params, SmallCNN, accuracy, cross_entropy, functional
from restrained.optim import perturbed_sgd


@dataclass(frozen=True)
class TwinRecord:
    """What :func:`train_twins` measured at each recorded step (NumPy arrays)."""

    steps: np.ndarray
    pde_time: np.ndarray
    divergence: np.ndarray  # D between the two copies' parameters
    loss_a: np.ndarray  # mini-batch loss of copy A (k = 1)
    loss_b: np.ndarray
    params_a: Params
    params_b: Params
    finite: bool  # False if either copy produced inf or NaN


def batch_indices(key: jax.Array, n_examples: int, batch_size: int, steps: int) -> jax.Array:
    """Indices of ``steps`` mini-batches: fresh permutations of the data, epoch after epoch."""
    if not 0 < batch_size <= n_examples:
        raise ValueError(f"batch_size must lie in [1, {n_examples}], got {batch_size}")
    per_epoch = n_examples // batch_size
    epochs = -(-steps // per_epoch)
    keys = jax.random.split(key, epochs)
    perms = jax.vmap(lambda k: jax.random.permutation(k, n_examples))(keys)
    batches = perms[:, : per_epoch * batch_size].reshape(epochs * per_epoch, batch_size)
    return batches[:steps]


@functools.lru_cache(maxsize=32)
def _twin_program(apply: Apply, learning_rate: float, k: int, weight_decay: float):
    """The jitted lockstep loop, built once per network and recursion and reused across calls."""
    opt_a = perturbed_sgd(learning_rate, k=1, weight_decay=weight_decay)
    opt_b = perturbed_sgd(learning_rate, k=k, weight_decay=weight_decay)

    def run(p0, x, y, blocks):
        grad_fn = jax.value_and_grad(lambda p, idx: cross_entropy(apply(p, x[idx]), y[idx]))

        def step(carry, idx):
            (pa, sa), (pb, sb) = carry
            la, ga = grad_fn(pa, idx)
            lb, gb = grad_fn(pb, idx)
            ua, sa = opt_a.update(ga, sa, pa)
            ub, sb = opt_b.update(gb, sb, pb)
            new = ((optax.apply_updates(pa, ua), sa), (optax.apply_updates(pb, ub), sb))
            return new, (la, lb)

        def chunk(carry, idx_block):
            carry, (la, lb) = jax.lax.scan(step, carry, idx_block)
            (pa, _), (pb, _) = carry
            return carry, (relative_l1(pa, pb), la[-1], lb[-1])

        init = ((p0, opt_a.init(p0)), (p0, opt_b.init(p0)))
        return jax.lax.scan(chunk, init, blocks)

    return jax.jit(run)


def train_twins(
    apply: Apply,
    params: Params,
    x: Any,
    y: Any,
    *,
    learning_rate: float,
    steps: int,
    k: int = 3,
    batch_size: int = 64,
    weight_decay: float = 0.0,
    record_every: int = 1,
    key: jax.Array,
) -> TwinRecord:
    """Train copy A (``k = 1``) and copy B (``k``) in lockstep with mini-batch SGD.

    Args:
        apply, params: the network, as returned by :func:`restrained.models.functional`.
        x, y: training data; ``key`` draws the mini-batch order shared by both copies.
        learning_rate, weight_decay, k: the SGD recursion of :mod:`restrained.optim`.
        steps: number of SGD steps; ``record_every`` must divide it.
    """
    if steps < 1:
        raise ValueError(f"steps must be >= 1, got {steps}")
    if record_every < 1 or steps % record_every:
        raise ValueError(f"record_every must be >= 1 and divide steps={steps}, got {record_every}")
    x, y = jnp.asarray(x), jnp.asarray(y)
    batches = batch_indices(key, x.shape[0], batch_size, steps)
    batches = batches.reshape(steps // record_every, record_every, batch_size)
    run = _twin_program(apply, float(learning_rate), int(k), float(weight_decay))
    ((pa, _), (pb, _)), (div, la, lb) = run(params, x, y, batches)
    recorded = np.arange(1, steps // record_every + 1) * record_every
    finite = all(bool(jnp.all(jnp.isfinite(v))) for v in jax.tree_util.tree_leaves((pa, pb)))
    return TwinRecord(
        steps=recorded,
        pde_time=recorded * float(learning_rate),
        divergence=np.asarray(div),
        loss_a=np.asarray(la),
        loss_b=np.asarray(lb),
        params_a=pa,
        params_b=pb,
        finite=finite,
    )


def test_agreement(apply: Apply, record: TwinRecord, x: Any, y: Any) -> dict[str, float]:
    """Test accuracy of both copies and the fraction of test images they label differently."""
    x, y = jnp.asarray(x), jnp.asarray(y)
    logits_a, logits_b = apply(record.params_a, x), apply(record.params_b, x)
    disagree = jnp.mean(jnp.argmax(logits_a, -1) != jnp.argmax(logits_b, -1))
    return {
        "accuracy_a": float(accuracy(logits_a, y)),
        "accuracy_b": float(accuracy(logits_b, y)),
        "disagreement": float(disagree),
    }


def one_step_difference(
    apply: Apply,
    params: Params,
    x: Any,
    y: Any,
    *,
    learning_rate: float,
    k: int,
    momentum: float = 0.0,
    nesterov: bool = False,
    weight_decay: float = 0.0,
) -> float:
    """Fraction of parameter entries that differ bitwise after one SGD step with ``k`` vs ``1``.

    Both steps use the gradient of the mean cross-entropy on ``(x, y)`` at ``params``.
    """
    grads = jax.grad(lambda p: cross_entropy(apply(p, x), y))(params)

    def step(kk: int) -> list[np.ndarray]:
        opt = perturbed_sgd(
            learning_rate, k=kk, momentum=momentum, nesterov=nesterov, weight_decay=weight_decay
        )
        updates, _ = opt.update(grads, opt.init(params), params)
        new = optax.apply_updates(params, updates)
        return [np.asarray(leaf) for leaf in jax.tree_util.tree_leaves(new)]

    base, other = step(1), step(k)
    differing = sum(int(np.sum(a != b)) for a, b in zip(base, other, strict=True))
    return differing / sum(a.size for a in base)


PUZZLE_LEARNING_RATES = (0.025, 0.5)
PUZZLE_PDE_TIME = 50.0


def puzzle_network(seed: int = 0, activation: str = "relu") -> tuple[Apply, Params]:
    """Chapter 1's network: two 3x3 convolutions of 8 channels (as patch matmuls) with
    ``activation``, 2x2 average pooling and a linear classifier, from ``nnx.Rngs(seed)``."""
    from flax import nnx

    module = SmallCNN(
        width=8, depth=2, activation=activation, conv_impl="matmul", rngs=nnx.Rngs(seed)
    )
    return functional(module)


def puzzle_runs(
    learning_rates: tuple[float, ...] = PUZZLE_LEARNING_RATES,
    orders: int = 16,
    *,
    k: int = 3,
    pde_time: float = PUZZLE_PDE_TIME,
    activation: str = "relu",
) -> dict[tuple[float, int], TwinRecord]:
    """Chapter 1's experiment: twins of :func:`puzzle_network` on the digits, plain SGD on
    mini-batches of 32, trained to PDE time ``pde_time`` (``pde_time / lr`` steps), once per
    batch order ``0 .. orders-1``; ``D`` is recorded at 50 equally spaced times."""
    if isinstance(orders, bool) or not isinstance(orders, int) or orders < 1:
        raise ValueError(f"orders must be an integer >= 1, got {orders!r}")
    data = load_digits()
    apply, initial = puzzle_network(activation=activation)
    runs = {}
    for lr in learning_rates:
        steps = round(pde_time / lr)
        for order in range(orders):
            runs[lr, order] = train_twins(
                apply,
                initial,
                data.x_train,
                data.y_train,
                learning_rate=lr,
                steps=steps,
                k=k,
                batch_size=32,
                record_every=steps // 50,
                key=jax.random.key(order),
            )
    return runs
