r"""The authors' perturbed SGD as an Optax gradient transformation.

Sun et al.'s optimizer (``instability/PDE_nesterov.py`` in their repository) is PyTorch
SGD with one extra integer ``k``. Per parameter tensor :math:`p` with gradient
:math:`\nabla\ell`, weight decay :math:`\alpha`, momentum :math:`\mu` and step size
:math:`\eta_t`:

.. math::

    g &= \nabla\ell + \alpha p, \\
    b_0 &= g, \qquad b_t = \mu b_{t-1} + g \quad (t \ge 1), \\
    d &= g + \mu b_t \ \text{(Nesterov)} \quad\text{or}\quad d = b_t, \\
    p &\leftarrow p - (\eta_t k)\cdot(d / k).

Without momentum, :math:`d = g`. For every ``k`` the update equals :math:`-\eta_t d` in
exact arithmetic; only its last-bit rounding changes with ``k``. That is the whole
perturbation of the paper's Table 1. The division :math:`d/k` is a correctly rounded
IEEE division (:func:`restrained.fp.ieee_divide`), as in PyTorch; left to itself, XLA
would compute it as :math:`d\cdot(1/k)`.
"""

from __future__ import annotations

import numbers
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from restrained.fp import ieee_divide

Schedule = Callable[[jax.Array], jax.Array]


class PerturbedSGDState(NamedTuple):
    """Step counter and momentum buffer (an empty tuple when ``momentum == 0``)."""

    count: jax.Array
    momentum: Any


def _check_args(learning_rate: Any, k: Any, momentum: float, nesterov: bool, weight_decay: float):
    if not callable(learning_rate):
        lr = float(learning_rate)
        if not (lr > 0 and jnp.isfinite(lr)):
            raise ValueError(f"learning_rate must be a finite number > 0, got {learning_rate!r}")
    if isinstance(k, bool) or not isinstance(k, numbers.Integral) or k < 1:
        raise ValueError(f"k must be an integer >= 1, got {k!r}")
    if not 0.0 <= float(momentum) < 1.0:
        raise ValueError(f"momentum must lie in [0, 1), got {momentum!r}")
    if not float(weight_decay) >= 0.0:
        raise ValueError(f"weight_decay must be >= 0, got {weight_decay!r}")
    if nesterov and float(momentum) == 0.0:
        raise ValueError("nesterov=True needs momentum in (0, 1), got momentum=0")


def perturbed_sgd(
    learning_rate: float | Schedule,
    k: int = 1,
    momentum: float = 0.0,
    nesterov: bool = False,
    weight_decay: float = 0.0,
) -> optax.GradientTransformation:
    """SGD whose applied step is computed as ``(lr * k) * (d / k)``.

    Args:
        learning_rate: a step size > 0, or an Optax schedule ``count -> lr``.
        k: the re-association factor, an integer >= 1; ``k = 1`` is plain SGD.
        momentum: heavy-ball coefficient in [0, 1), without dampening.
        nesterov: use the Nesterov direction (needs ``momentum > 0``).
        weight_decay: L2 coefficient added to the gradient (needs ``params`` in ``update``).

    With a constant ``learning_rate`` the product ``lr * k`` is formed in double precision
    and rounded once to the parameters' dtype, as PyTorch does; with a schedule it is
    formed in the schedule's dtype.

    Raises:
        ValueError: naming the argument and its valid range.
    """
    _check_args(learning_rate, k, momentum, nesterov, weight_decay)
    mu = float(momentum)
    alpha = float(weight_decay)

    def init_fn(params: Any) -> PerturbedSGDState:
        buf = jax.tree_util.tree_map(jnp.zeros_like, params) if mu > 0 else ()
        return PerturbedSGDState(count=jnp.zeros([], jnp.int32), momentum=buf)

    def update_fn(updates: Any, state: PerturbedSGDState, params: Any = None):
        if alpha > 0 and params is None:
            raise ValueError("params must be passed to update() when weight_decay > 0")
        if alpha > 0:
            grads = jax.tree_util.tree_map(lambda g, p: g + alpha * p, updates, params)
        else:
            grads = updates
        if mu > 0:
            first = state.count == 0
            buf = jax.tree_util.tree_map(
                lambda b, g: jnp.where(first, g, mu * b + g), state.momentum, grads
            )
            if nesterov:
                direction = jax.tree_util.tree_map(lambda g, b: g + mu * b, grads, buf)
            else:
                direction = buf
        else:
            buf, direction = (), grads
        if callable(learning_rate):
            step = learning_rate(state.count) * k
        else:
            step = float(learning_rate) * k

        def apply(d: jax.Array) -> jax.Array:
            quotient = d if k == 1 else ieee_divide(d, k)
            return -jnp.asarray(step, d.dtype) * quotient

        new_updates = jax.tree_util.tree_map(apply, direction)
        count = optax.safe_increment(state.count)
        return new_updates, PerturbedSGDState(count=count, momentum=buf)

    return optax.GradientTransformation(init_fn, update_fn)
