r"""An ensemble of networks indexed by (seed, k, learning rate, weight decay).

The paper's Table 1 trains, for each seed, one copy of a network per re-association
factor :math:`k`, all from the same initial weights and on the same mini-batches. Here
the whole grid is one batch of *members*: member :math:`m` has a seed :math:`s_m`, a
factor :math:`k_m`, a base learning rate :math:`\eta_m` and a weight decay
:math:`\alpha_m`, and every member runs the authors' recursion
(:mod:`restrained.optim`)

.. math::

    g = \nabla\ell + \alpha_m p,\quad b \leftarrow \mu b + g\ (b_0 = g),\quad
    d = g + \mu b\ \text{(Nesterov) or } b,\quad
    p \leftarrow p - \operatorname{fl}(\eta_t k_m)\cdot(d / k_m),

with :math:`\operatorname{fl}(\eta_t k_m)` formed in double precision and rounded once
to float32, as PyTorch does with its scalar step. :func:`member_sgd` is the same
arithmetic as :func:`restrained.optim.perturbed_sgd`, but with ``k``, the step and the
weight decay as traced per-member values, so that one compiled program can ``vmap`` over
members with different ``k`` (``perturbed_sgd`` needs a Python integer ``k``). The unit
tests check that the two agree bit for bit.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from restrained.fp import ieee_divide


@dataclass(frozen=True)
class Members:
    """Who is in the ensemble: parallel tuples, one entry per member."""

    seeds: tuple[int, ...]
    ks: tuple[int, ...]
    learning_rates: tuple[float, ...]
    weight_decays: tuple[float, ...]

    def __post_init__(self) -> None:
        n = len(self.seeds)
        if n == 0:
            raise ValueError("an ensemble needs at least one member (seeds is empty)")
        for name in ("ks", "learning_rates", "weight_decays"):
            if len(getattr(self, name)) != n:
                raise ValueError(f"{name} must have one entry per member ({n})")
        for k in self.ks:
            if isinstance(k, bool) or not isinstance(k, numbers.Integral) or k < 1:
                raise ValueError(f"every k must be an integer >= 1, got {k!r}")
        for s in self.seeds:
            if isinstance(s, bool) or not isinstance(s, numbers.Integral) or s < 0:
                raise ValueError(f"every seed must be an integer >= 0, got {s!r}")
        for lr in self.learning_rates:
            if not (math.isfinite(lr) and lr > 0):
                raise ValueError(f"every learning rate must be finite and > 0, got {lr!r}")
        for wd in self.weight_decays:
            if not (math.isfinite(wd) and wd >= 0):
                raise ValueError(f"every weight decay must be finite and >= 0, got {wd!r}")

    @classmethod
    def grid(
        cls,
        seeds: Sequence[int],
        ks: Sequence[int],
        learning_rates: Sequence[float] = (0.1,),
        weight_decays: Sequence[float] = (0.0,),
    ) -> Members:
        """Every combination, ordered learning rate, weight decay, seed, then k (fastest)."""
        rows = [
            (s, k, lr, wd)
            for lr in learning_rates
            for wd in weight_decays
            for s in seeds
            for k in ks
        ]
        s, k, lr, wd = zip(*rows, strict=True) if rows else ((), (), (), ())
        return cls(
            tuple(int(v) for v in s),
            tuple(int(v) for v in k),
            tuple(float(v) for v in lr),
            tuple(float(v) for v in wd),
        )

    @property
    def size(self) -> int:
        return len(self.seeds)

    @property
    def unique_seeds(self) -> tuple[int, ...]:
        return tuple(dict.fromkeys(self.seeds))

    @property
    def seed_slots(self) -> np.ndarray:
        """For each member, the index of its seed in :attr:`unique_seeds`."""
        where = {s: i for i, s in enumerate(self.unique_seeds)}
        return np.asarray([where[s] for s in self.seeds], np.int32)

    @property
    def references(self) -> np.ndarray:
        """For each member, the first ``k = 1`` member with the same seed, learning rate and
        weight decay (its unperturbed twin), or -1 if there is none."""
        first: dict[tuple, int] = {}
        for m in range(self.size):
            if self.ks[m] == 1:
                first.setdefault(self._cell(m), m)
        return np.asarray([first.get(self._cell(m), -1) for m in range(self.size)], np.int32)

    def _cell(self, m: int) -> tuple:
        return (self.seeds[m], self.learning_rates[m], self.weight_decays[m])

    def describe(self) -> list[dict[str, Any]]:
        """One JSON-ready dict per member."""
        refs = self.references
        return [
            {
                "seed": self.seeds[m],
                "k": self.ks[m],
                "learning_rate": self.learning_rates[m],
                "weight_decay": self.weight_decays[m],
                "reference": int(refs[m]),
            }
            for m in range(self.size)
        ]


def phase_learning_rates(base: float, n_phases: int, decay: float) -> list[float]:
    """``[base, base*decay, base*decay*decay, ...]``, each a Python (double) product of
    the previous one, as a PyTorch script that does ``lr *= decay`` computes them."""
    rates = [float(base)]
    for _ in range(n_phases - 1):
        rates.append(rates[-1] * float(decay))
    return rates


def step_table(members: Members, n_phases: int, decay: float) -> np.ndarray:
    """float32 ``(n_phases, M)`` table of applied step sizes ``fl(lr_phase * k)``.

    The product is taken in double precision and rounded once to float32.
    """
    table = np.empty((n_phases, members.size), np.float32)
    for m in range(members.size):
        rates = phase_learning_rates(members.learning_rates[m], n_phases, decay)
        for p, lr in enumerate(rates):
            table[p, m] = np.float32(lr * members.ks[m])
    return table


def member_sgd(
    grads: Any,
    momentum_buffer: Any,
    params: Any,
    first: jax.Array,
    step: jax.Array,
    k: jax.Array,
    weight_decay: jax.Array,
    *,
    momentum: float,
    nesterov: bool,
    use_weight_decay: bool,
) -> tuple[Any, Any]:
    r"""One perturbed-SGD step of one member; returns ``(new_params, new_buffer)``.

    ``step`` is :math:`\operatorname{fl}(\eta_t k)` (float32), ``k`` the factor as a float32,
    ``first`` whether this is the first step (the buffer then starts at ``g``). With
    ``momentum == 0`` the buffer is returned unchanged and ignored. ``use_weight_decay``
    is static so that an ensemble without weight decay computes exactly ``g``.
    """
    tree_map = jax.tree_util.tree_map
    if use_weight_decay:
        grads = tree_map(lambda g, p: g + weight_decay * p, grads, params)
    if momentum > 0:
        buf = tree_map(lambda b, g: jnp.where(first, g, momentum * b + g), momentum_buffer, grads)
        direction = tree_map(lambda g, b: g + momentum * b, grads, buf) if nesterov else buf
    else:
        buf, direction = momentum_buffer, grads

    def apply(p: jax.Array, d: jax.Array) -> jax.Array:
        update = -step.astype(d.dtype) * ieee_divide(d, k.astype(d.dtype))
        return jnp.asarray(p + update).astype(p.dtype)

    return tree_map(apply, params, direction), buf
