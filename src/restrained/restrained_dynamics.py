r"""Restrained instabilities of the one-layer CNN: the exact scalar map and twin iterations.

**The scalar map.** For the authors' ``N_I x N_I`` :math:`\pm1` checkerboard and an
``s x s`` kernel every valid patch is :math:`\pm c` (``c`` the checkerboard patch at the
origin, :math:`\|c\|^2 = s^2`). The pre-activation at position ``x`` is
:math:`(K*I)(x) = \pm p` with :math:`p = \langle K, c\rangle`, a fraction :math:`f_+` of the
:math:`N = (N_I-s+1)^2` positions seeing :math:`+p` and :math:`f_- = 1-f_+` seeing :math:`-p`.
With Swish :math:`\varphi(u) = u\,\sigma(\beta u)`, average pooling and BCE with label ``y``,

.. math::

    z(p) = f_+\varphi(p) + f_-\varphi(-p), \qquad
    A(p) = (\sigma(z) - y)\,\big(f_+\varphi'(p) - f_-\varphi'(-p)\big),

and the gradient is :math:`\nabla_K E = A(p)\,c + \alpha K`. Gradient descent with step
:math:`\Delta t` therefore moves ``p`` by the scalar map

.. math:: p_{n+1} = p_n - \Delta t\, g(p_n), \qquad g(p) = A(p)\,\|c\|^2 + \alpha p,

while the part of ``K`` orthogonal to ``c`` is multiplied by :math:`1-\Delta t\,\alpha` at each
step. The Hessian of ``E`` has eigenvalue :math:`g'(p)` on ``c`` and :math:`\alpha` on its
orthogonal complement, and the map's local amplification is :math:`|1-\Delta t\, g'(p)|`.

**Regions.** The transitioning linearisation replaces :math:`\varphi'(u)` by
:math:`\tfrac12 + \tfrac{\beta u}{4}`, which reaches the activated value 1 at
:math:`\beta u = 2` and the not-activated value 0 at :math:`\beta u = -2`. The book uses
these crossings as region boundaries: a position is *activated* if :math:`\beta u > 2`,
*not activated* if :math:`\beta u < -2`, *transitioning* otherwise.

**Twin iterations.** :func:`iterate` and :func:`twin_iteration` run forward Euler on any
gradient function, the second one as two copies in lockstep whose steps are rounded as
:math:`\eta\, d` and :math:`(\eta k)(d/k)` (the authors' ``PySun2.py`` protocol).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from scipy.optimize import brentq
from scipy.special import expit

from restrained.fp import ieee_divide, relative_l1

REGION_EDGE = 2.0
NOT_ACTIVATED, TRANSITIONING, ACTIVATED = -1, 0, 1
REGION_NAMES = {
    NOT_ACTIVATED: "not activated",
    TRANSITIONING: "transitioning",
    ACTIVATED: "activated",
}


def swish(u: Any, beta: float = 1.0) -> Any:
    r""":math:`\varphi_\beta(u) = u\,\sigma(\beta u)` (NumPy, float64)."""
    return u * expit(beta * np.asarray(u, np.float64))


def swish_prime(u: Any, beta: float = 1.0) -> Any:
    r""":math:`\varphi'_\beta(u) = s + \beta u\, s(1-s)` with :math:`s = \sigma(\beta u)`."""
    s = expit(beta * np.asarray(u, np.float64))
    return s + beta * u * s * (1.0 - s)


def swish_second(u: Any, beta: float = 1.0) -> Any:
    r""":math:`\varphi''_\beta(u) = \beta s(1-s)\,\big(2 + \beta u (1 - 2s)\big)`."""
    s = expit(beta * np.asarray(u, np.float64))
    return beta * s * (1.0 - s) * (2.0 + beta * u * (1.0 - 2.0 * s))


@dataclass(frozen=True)
class CheckerboardMap:
    """The exact scalar reduction of the one-layer model on the ±1 checkerboard.

    Defaults are the paper's Figure 4: a 256x256 image, a 32x32 kernel, β = 1, label 1,
    weight decay α = 20.
    """

    alpha: float = 20.0
    beta: float = 1.0
    label: float = 1.0
    image_size: int = 256
    kernel_size: int = 32

    def __post_init__(self) -> None:
        if not self.alpha >= 0:
            raise ValueError(f"alpha must be >= 0, got {self.alpha}")
        if not self.beta > 0:
            raise ValueError(f"beta must be > 0, got {self.beta}")
        if self.label not in (0.0, 1.0):
            raise ValueError(f"label must be 0 or 1, got {self.label}")
        if not 1 <= self.kernel_size <= self.image_size:
            raise ValueError(
                f"kernel_size must lie in [1, image_size={self.image_size}], got {self.kernel_size}"
            )

    @property
    def positions(self) -> int:
        """Number N of valid positions, (N_I - s + 1)^2."""
        return (self.image_size - self.kernel_size + 1) ** 2

    @property
    def f_plus(self) -> float:
        """Fraction of positions whose patch is +c (those with an even index sum)."""
        return ((self.positions + 1) // 2) / self.positions

    @property
    def f_minus(self) -> float:
        return 1.0 - self.f_plus

    @property
    def c_norm2(self) -> float:
        """Squared norm of the checkerboard patch, s^2."""
        return float(self.kernel_size**2)

    def patch(self) -> np.ndarray:
        """The patch c at the origin: -1 where the index sum is even, +1 elsewhere (as PySun.py)."""
        i, j = np.indices((self.kernel_size, self.kernel_size))
        return np.where((i + j) % 2 == 0, -1.0, 1.0)

    def z(self, p: Any) -> Any:
        """Pooled output z(p)."""
        p = np.asarray(p, np.float64)
        return self.f_plus * swish(p, self.beta) + self.f_minus * swish(-p, self.beta)

    def force(self, p: Any) -> Any:
        """A(p): the BCE part of the gradient, per unit of c."""
        p = np.asarray(p, np.float64)
        dz = self.f_plus * swish_prime(p, self.beta) - self.f_minus * swish_prime(-p, self.beta)
        return (expit(self.z(p)) - self.label) * dz

    def g(self, p: Any) -> Any:
        """g(p) = A(p)·||c||² + α p: the map moves p by -Δt·g(p)."""
        p = np.asarray(p, np.float64)
        return self.force(p) * self.c_norm2 + self.alpha * p

    def curvature(self, p: Any) -> Any:
        """g'(p): the Hessian eigenvalue of E along c, analytic."""
        p = np.asarray(p, np.float64)
        dz = self.f_plus * swish_prime(p, self.beta) - self.f_minus * swish_prime(-p, self.beta)
        d2z = self.f_plus * swish_second(p, self.beta) + self.f_minus * swish_second(-p, self.beta)
        s = expit(self.z(p))
        return (s * (1.0 - s) * dz**2 + (s - self.label) * d2z) * self.c_norm2 + self.alpha

    def loss(self, p: Any, perp_norm2: Any = 0.0) -> Any:
        """Total loss BCE + (α/2)||K||², with ||K||² = p²/||c||² + ||K⊥||²."""
        z = self.z(p)
        bce = np.logaddexp(0.0, -z) if self.label == 1.0 else np.logaddexp(0.0, z)
        return bce + 0.5 * self.alpha * (np.asarray(p) ** 2 / self.c_norm2 + perp_norm2)

    def step(self, p: Any, lr: Any, k: int = 1) -> Any:
        """One GD step, rounded as (lr·k)·(g/k) like the authors' update (k = 1: lr·g)."""
        lr = np.asarray(lr, np.float64)
        gp = self.g(p)
        return p - (lr * k) * (gp / k) if k != 1 else p - lr * gp

    def minimiser(self, lo: float = 0.5, hi: float = 50.0) -> float:
        """The positive root p* of g (a local minimiser of the reduced loss), by Brent's method."""
        return float(brentq(self.g, lo, hi, xtol=1e-14, rtol=1e-15))

    def kernel_from(self, p: float, perp: np.ndarray | None = None) -> np.ndarray:
        """The kernel (p/||c||²)·c + K⊥."""
        k = self.patch() * (p / self.c_norm2)
        return k if perp is None else k + perp

    def projection(self, kernel: np.ndarray) -> float:
        """p = <K, c>."""
        return float(np.sum(np.asarray(kernel, np.float64) * self.patch()))


@dataclass(frozen=True)
class Orbit:
    """A trajectory of the scalar map for each learning rate (rows)."""

    lrs: np.ndarray
    p: np.ndarray  # shape (len(lrs), steps + 1); NaN after divergence
    diverged_at: np.ndarray  # first step with |p| > bound or non-finite, -1 if never


def run_map(
    m: CheckerboardMap,
    lrs: Any,
    p0: float,
    steps: int,
    *,
    k: int = 1,
    bound: float = 1e6,
) -> Orbit:
    """Iterate the scalar map from ``p0`` for every learning rate at once (vectorised)."""
    lrs = np.atleast_1d(np.asarray(lrs, np.float64))
    if steps < 1:
        raise ValueError(f"steps must be >= 1, got {steps}")
    if np.any(lrs <= 0) or not np.all(np.isfinite(lrs)):
        raise ValueError(f"lrs must be finite and > 0, got {lrs}")
    if isinstance(k, bool) or int(k) != k or k < 1:
        raise ValueError(f"k must be an integer >= 1, got {k}")
    out = np.full((lrs.size, steps + 1), np.nan)
    out[:, 0] = p0
    diverged = np.full(lrs.size, -1)
    p = np.full(lrs.size, float(p0))
    with np.errstate(over="ignore", invalid="ignore"):
        for n in range(1, steps + 1):
            p = m.step(p, lrs, k)
            bad = (~np.isfinite(p) | (np.abs(p) > bound)) & (diverged < 0)
            diverged[bad] = n
            p = np.where(diverged >= 0, np.nan, p)
            out[:, n] = p
    return Orbit(lrs=lrs, p=out, diverged_at=diverged)


def orbit_period(tail: np.ndarray, max_period: int = 32, rtol: float = 1e-6) -> int:
    """Smallest period q <= max_period of a recorded tail, 0 if none (chaos), -1 if diverged."""
    tail = np.asarray(tail, np.float64)
    if not np.all(np.isfinite(tail)):
        return -1
    scale = 1.0 + np.max(np.abs(tail))
    for q in range(1, max_period + 1):
        if q < tail.size and np.max(np.abs(tail[q:] - tail[:-q])) <= rtol * scale:
            return q
    return 0


def describe_period(q: int) -> str:
    """'fixed point', 'period 2', ..., 'chaotic' (q = 0) or 'diverged' (q = -1)."""
    return {-1: "diverged", 0: "chaotic", 1: "fixed point"}.get(q, f"period {q}")


def lyapunov(m: CheckerboardMap, lr: float, tail: np.ndarray) -> float:
    """Mean of log|1 - lr·g'(p_n)| over a tail: the exponential rate at which errors grow."""
    tail = np.asarray(tail, np.float64)
    if not np.all(np.isfinite(tail)):
        return float("inf")
    return float(np.mean(np.log(np.abs(1.0 - lr * m.curvature(tail)) + 1e-300)))


@dataclass(frozen=True)
class Bifurcation:
    """Attractor of the scalar map over a learning-rate grid."""

    lrs: np.ndarray
    tails: np.ndarray  # (len(lrs), keep): the last ``keep`` iterates
    periods: np.ndarray  # per lr: 1 fixed point, q >= 2 periodic, 0 chaotic, -1 diverged
    lyapunov: np.ndarray

    def first_lr(self, predicate: Callable[[int], bool]) -> float:
        """Smallest grid lr whose period satisfies ``predicate`` (NaN if none)."""
        hits = [lr for lr, q in zip(self.lrs, self.periods, strict=True) if predicate(int(q))]
        return float(min(hits)) if hits else float("nan")


def bifurcation(
    m: CheckerboardMap,
    lrs: Any,
    *,
    p0: float = 1.0,
    transient: int = 3000,
    keep: int = 256,
    max_period: int = 32,
) -> Bifurcation:
    """Iterate ``transient + keep`` steps per lr and classify the last ``keep`` iterates."""
    orbit = run_map(m, lrs, p0, transient + keep)
    tails = orbit.p[:, -keep:]
    periods = np.array([orbit_period(t, max_period) for t in tails])
    lyap = np.array([lyapunov(m, lr, t) for lr, t in zip(orbit.lrs, tails, strict=True)])
    return Bifurcation(lrs=orbit.lrs, tails=tails, periods=periods, lyapunov=lyap)


def regions(preactivation: Any, beta: float = 1.0, edge: float = REGION_EDGE) -> Any:
    """Region code per position: -1 not activated (βu < -edge), 0 transitioning, +1 activated."""
    u = beta * jnp.asarray(preactivation)
    return jnp.where(u > edge, ACTIVATED, jnp.where(u < -edge, NOT_ACTIVATED, TRANSITIONING))


def region_fractions(preactivation: Any, beta: float = 1.0, edge: float = REGION_EDGE) -> Any:
    """Fractions of positions (not activated, transitioning, activated); jittable."""
    r = regions(preactivation, beta, edge)
    return jnp.stack([jnp.mean(r == code) for code in (NOT_ACTIVATED, TRANSITIONING, ACTIVATED)])


def local_amplification(m: CheckerboardMap, lr: Any, p: Any) -> Any:
    """|1 - lr·g'(p)|: how much one step stretches a perturbation along c."""
    return np.abs(1.0 - np.asarray(lr) * m.curvature(p))


# --------------------------------------------------------------------------------------
# Forward Euler on a general gradient, one copy or two in lockstep (JAX, jitted scans).

Gradient = Callable[[jax.Array], jax.Array]
Observe = Callable[[jax.Array], Any]


@dataclass(frozen=True)
class Trajectory:
    """What :func:`iterate` recorded after each step (NumPy)."""

    observed: Any  # pytree of arrays with leading axis ``steps``
    final: np.ndarray
    alive: np.ndarray  # bool per step: False once the iterate became non-finite or too large
    diverged_at: int  # first dead step (1-based), -1 if none


@dataclass(frozen=True)
class TwinTrajectory:
    """What :func:`twin_iteration` recorded after each step (NumPy)."""

    divergence: np.ndarray  # D between the copies after each step
    observed_a: Any
    observed_b: Any
    final_a: np.ndarray
    final_b: np.ndarray
    alive: np.ndarray
    diverged_at: Any  # int, or one int per learning rate for a sweep


def _check_run(lr: float, steps: int, k: int) -> None:
    if not (np.isfinite(lr) and lr > 0):
        raise ValueError(f"lr must be finite and > 0, got {lr}")
    if steps < 1:
        raise ValueError(f"steps must be >= 1, got {steps}")
    if isinstance(k, bool) or int(k) != k or k < 1:
        raise ValueError(f"k must be an integer >= 1, got {k}")


def euler_step(x: jax.Array, grad: jax.Array, lr: float, k: int) -> jax.Array:
    """x - (lr·k)·(grad/k), with a correctly rounded division; k = 1 gives x - lr·grad."""
    if k == 1:
        return x - jnp.asarray(lr, x.dtype) * grad
    return x - jnp.asarray(float(lr) * k, x.dtype) * ieee_divide(grad, k)


def _healthy(x: jax.Array, bound: float) -> jax.Array:
    return jnp.all(jnp.isfinite(x)) & (jnp.max(jnp.abs(x)) <= bound)


def iterate(
    gradient: Gradient,
    x0: Any,
    lr: float,
    steps: int,
    *,
    k: int = 1,
    observe: Observe | None = None,
    bound: float = 1e12,
) -> Trajectory:
    """Forward Euler ``x <- x - lr·gradient(x)`` for ``steps`` steps, observing after each.

    A step that would produce a non-finite iterate or one with an entry above ``bound`` is
    not taken: the iterate freezes, ``alive`` turns False and ``diverged_at`` records the step.
    """
    _check_run(lr, steps, k)
    observe = observe or (lambda x: ())

    def body(carry, _):
        x, ok = carry
        new = euler_step(x, gradient(x), lr, k)
        ok = ok & _healthy(new, bound)
        x = jnp.where(ok, new, x)
        return (x, ok), (observe(x), ok)

    @jax.jit
    def run(x):
        return jax.lax.scan(body, (x, jnp.array(True)), None, length=steps)

    (x, _), (obs, alive) = run(jnp.asarray(x0))
    alive = np.asarray(alive)
    dead = np.flatnonzero(~alive)
    return Trajectory(
        observed=jax.tree_util.tree_map(np.asarray, obs),
        final=np.asarray(x),
        alive=alive,
        diverged_at=int(dead[0]) + 1 if dead.size else -1,
    )


def twin_sweep(
    gradient: Gradient,
    x0: Any,
    lrs: Any,
    steps: int,
    *,
    k: int = 3,
    observe: Observe | None = None,
    bound: float = 1e12,
    x0_b: Any = None,
) -> TwinTrajectory:
    """Two copies from the same ``x0`` for every learning rate at once (vmapped).

    Copy A steps with ``lr·g``, copy B with ``(lr·k)·(g/k)``; ``lr·k`` is formed in double
    precision and rounded once, as PyTorch does. Records ``D`` (:func:`restrained.fp.relative_l1`)
    and ``observe`` of each copy after each step. A learning rate whose copies become
    unhealthy (non-finite, or an entry above ``bound``) is frozen from that step on. Every
    field has a leading axis over ``lrs``; ``diverged_at`` is then an array. To continue
    earlier runs, pass per-learning-rate starts: ``x0`` (copy A) and ``x0_b`` (copy B), each
    with a leading axis over ``lrs``.
    """
    lrs = np.atleast_1d(np.asarray(lrs, np.float64))
    for lr in lrs:
        _check_run(float(lr), steps, k)
    if k == 1:
        raise ValueError("k must be >= 2 for a twin iteration (k = 1 makes identical copies)")
    observe = observe or (lambda x: ())
    x0 = jnp.asarray(x0)
    batched = x0_b is not None
    starts_b = jnp.asarray(x0_b) if batched else x0
    lr_a = jnp.asarray(lrs, x0.dtype)
    step_b = jnp.asarray(lrs * k, x0.dtype)

    def run(la, sb, xa, xb):
        def body(carry, _):
            a, b, ok = carry
            na = a - la * gradient(a)
            nb = b - sb * ieee_divide(gradient(b), k)
            ok = ok & _healthy(na, bound) & _healthy(nb, bound)
            a, b = jnp.where(ok, na, a), jnp.where(ok, nb, b)
            return (a, b, ok), (relative_l1(a, b), observe(a), observe(b), ok)

        return jax.lax.scan(body, (xa, xb, jnp.array(True)), None, length=steps)

    axes = (0, 0, 0, 0) if batched else (0, 0, None, None)
    (a, b, _), (div, oa, ob, alive) = jax.jit(jax.vmap(run, in_axes=axes))(
        lr_a, step_b, x0, starts_b
    )
    alive = np.asarray(alive)
    first_dead = np.where(alive.all(axis=1), -1, np.argmin(alive, axis=1) + 1)
    to_np = lambda t: jax.tree_util.tree_map(np.asarray, t)  # noqa: E731
    return TwinTrajectory(
        divergence=np.asarray(div),
        observed_a=to_np(oa),
        observed_b=to_np(ob),
        final_a=np.asarray(a),
        final_b=np.asarray(b),
        alive=alive,
        diverged_at=first_dead,
    )


def twin_iteration(
    gradient: Gradient,
    x0: Any,
    lr: float,
    steps: int,
    *,
    k: int = 3,
    observe: Observe | None = None,
    bound: float = 1e12,
) -> TwinTrajectory:
    """:func:`twin_sweep` for one learning rate, without the leading axis."""
    sweep = twin_sweep(gradient, x0, [lr], steps, k=k, observe=observe, bound=bound)
    first = lambda t: jax.tree_util.tree_map(lambda v: v[0], t)  # noqa: E731
    return TwinTrajectory(
        divergence=sweep.divergence[0],
        observed_a=first(sweep.observed_a),
        observed_b=first(sweep.observed_b),
        final_a=sweep.final_a[0],
        final_b=sweep.final_b[0],
        alive=sweep.alive[0],
        diverged_at=int(sweep.diverged_at[0]),
    )


def moving_average(x: Any, window: int) -> np.ndarray:
    """Trailing moving average of length ``len(x) - window + 1`` (the authors use 100)."""
    x = np.asarray(x, np.float64)
    if not 1 <= window <= x.size:
        raise ValueError(f"window must lie in [1, {x.size}], got {window}")
    c = np.cumsum(np.concatenate([[0.0], x]))
    return (c[window:] - c[:-window]) / window


def energy_fraction(diff: Any, direction: Any) -> float:
    """Fraction of ||diff||² that lies along ``direction``: <d,u>²/(||d||²||u||²)."""
    d = np.asarray(diff, np.float64).ravel()
    u = np.asarray(direction, np.float64).ravel()
    dd, uu = float(d @ d), float(u @ u)
    if uu == 0:
        raise ValueError("direction must be non-zero")
    return float((d @ u) ** 2 / (dd * uu)) if dd > 0 else 0.0
