r"""Full-batch gradient descent at the Edge of Stability, with sharpness tracked in the loop.

The training objective is :math:`F(\theta) = L(\theta) + \tfrac{\alpha}{2}\|\theta\|^2`, with
``L`` a full-batch loss (here :func:`half_mse`,
:math:`L = \frac{1}{2n}\sum_{i=1}^n \|f(x_i;\theta) - y_i\|^2`, Cohen et al.'s convention)
and :math:`\alpha` an L2 weight decay. Gradient descent with step :math:`\eta` (and, optionally,
heavy-ball momentum :math:`\mu`) is run by :func:`restrained.optim.perturbed_sgd`, so a second
copy whose steps are rounded as :math:`(\eta k)(d/k)` can run in lockstep.

Every ``track_every`` steps the *sharpness* :math:`\lambda_{\max}(\nabla^2 L)` is computed by
:func:`restrained.sharpness.top_hessian_eigs`, warm-started from the previous top eigenvector.
The linear stability limit of the iteration at a point is

.. math:: \lambda_{\max}(\nabla^2 L) + \alpha \;<\; \frac{2 + 2\mu}{\eta},

(:math:`2/\eta` without momentum): :math:`\lambda + \alpha` is the *effective sharpness*.

:func:`gradient_flow_distance` integrates the gradient flow
:math:`\dot\theta = -\nabla F(\theta)` with classical RK4 and measures how far GD (at time
:math:`t = \eta n`) is from it. :func:`first_crossing` and :func:`divergence_onset` turn the
recorded curves into onset steps.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

from restrained.fp import relative_l1
from restrained.optim import perturbed_sgd

Params = Any
LossFn = Callable[[Params], jax.Array]


# ---------------------------------------------------------------------------- model, data


def half_mse(outputs: jax.Array, targets: jax.Array) -> jax.Array:
    r""":math:`\frac{1}{2n}\sum_i \|f_i - y_i\|^2`: squared error summed over outputs, halved,
    averaged over examples (Cohen et al. 2021). Without the ½ every sharpness doubles."""
    return 0.5 * jnp.mean(jnp.sum((outputs - targets) ** 2, axis=-1))


def mlp_init(key: jax.Array, sizes: Sequence[int]) -> list[tuple[jax.Array, jax.Array]]:
    """Dense layers ``sizes[0] -> ... -> sizes[-1]``: weights N(0, 1/fan_in), zero biases."""
    sizes = [int(s) for s in sizes]
    if len(sizes) < 2 or min(sizes) < 1:
        raise ValueError(f"sizes must hold >= 2 positive layer widths, got {sizes}")
    params = []
    for fan_in, fan_out in itertools.pairwise(sizes):
        key, sub = jax.random.split(key)
        w = jax.random.normal(sub, (fan_in, fan_out), jnp.float32) / np.sqrt(fan_in)
        params.append((w, jnp.zeros(fan_out, jnp.float32)))
    return params


def mlp_apply(params: list[tuple[jax.Array, jax.Array]], x: jax.Array) -> jax.Array:
    """tanh hidden layers, linear output."""
    for w, b in params[:-1]:
        x = jnp.tanh(x @ w + b)
    w, b = params[-1]
    return x @ w + b


def digits_regression(n: int = 1000) -> tuple[jax.Array, jax.Array]:
    """The first ``n`` training digits as standardised 64-vectors, and one-hot 0/1 targets.

    Each pixel is centred and scaled by its mean and standard deviation over those ``n``
    images (constant pixels are left at 0).
    """
    from restrained.data import load_digits

    split = load_digits()
    if not 1 <= n <= split.x_train.shape[0]:
        raise ValueError(f"n must lie in [1, {split.x_train.shape[0]}], got {n}")
    x = split.x_train[:n].reshape(n, -1).astype(np.float64)
    std = x.std(axis=0)
    x = (x - x.mean(axis=0)) / np.where(std > 0, std, 1.0)
    y = np.eye(split.num_classes, dtype=np.float32)[split.y_train[:n]]
    return jnp.asarray(x, jnp.float32), jnp.asarray(y)


def mlp_problem(
    n: int = 1000, hidden: Sequence[int] = (64, 64), seed: int = 0
) -> tuple[LossFn, Params]:
    """A tanh MLP on ``n`` digits with :func:`half_mse`: the loss function and initial params."""
    x, y = digits_regression(n)
    params = mlp_init(jax.random.PRNGKey(seed), [x.shape[1], *hidden, y.shape[1]])

    def loss_fn(p: Params) -> jax.Array:
        return half_mse(mlp_apply(p, x), y)

    return loss_fn, params


# ------------------------------------------------------------------------------ sharpness

SharpnessFn = Callable[[LossFn, Params, Any], tuple[float, Any, int]]


def lobpcg_sharpness(*, warm_steps: int | None = None, **options: Any) -> SharpnessFn:
    """The top Hessian eigenvalue by :func:`restrained.sharpness.top_hessian_eigs`.

    Returns ``f(loss_fn, params, warm) -> (lambda_max, eigenvector, hvps)``; ``warm`` is the
    previous eigenvector (or None) and starts the solver. ``options`` go to the solver. With
    ``warm_steps``, a warm-started call runs exactly that many Lanczos steps instead (a fixed,
    small budget); the cold first call still uses ``options``.
    """
    from restrained.sharpness import top_hessian_eigs

    if warm_steps is not None and warm_steps < 1:
        raise ValueError(f"warm_steps must be >= 1 or None, got {warm_steps}")
    warm_options = dict(options, method="lanczos", tol=1e-12, max_iters=warm_steps)

    def f(loss_fn: LossFn, params: Params, warm: Any) -> tuple[float, Any, int]:
        opts = warm_options if (warm is not None and warm_steps) else options
        eigs = top_hessian_eigs(loss_fn, params, k=1, init=warm, **opts)
        return float(eigs.values[0]), eigs.vectors, int(eigs.num_hvps)

    return f


# ---------------------------------------------------------------------------- GD training


@dataclass(frozen=True)
class GDRun:
    """What :func:`train_gd` recorded. Steps count from 1; ``loss[i]`` is L before step i+1."""

    lr: float
    weight_decay: float
    momentum: float
    loss: np.ndarray  # L(theta_n), n = 0 .. steps-1 (data loss, no weight-decay term)
    tracked_steps: np.ndarray  # n at which the sharpness was measured (0, m, 2m, ...)
    sharpness: np.ndarray  # lambda_max of the Hessian of L at those n
    hvps: np.ndarray  # Hessian-vector products used per measurement
    divergence: np.ndarray | None  # D(copy k=1, copy k) after each step, if a twin ran
    diverged_at: int  # first step whose iterate was non-finite, -1 if none
    final_params: Params = field(repr=False)
    separation: np.ndarray | None = None  # ||theta_k - theta_1|| / ||theta_1|| after each step

    @property
    def threshold(self) -> float:
        """(2 + 2 mu) / eta: the stability limit for the effective sharpness."""
        return (2.0 + 2.0 * self.momentum) / self.lr

    @property
    def effective_sharpness(self) -> np.ndarray:
        return self.sharpness + self.weight_decay


def _check_train(lr: float, steps: int, track_every: int, weight_decay: float, momentum: float):
    if not (np.isfinite(lr) and lr > 0):
        raise ValueError(f"lr must be finite and > 0, got {lr}")
    if steps < 1:
        raise ValueError(f"steps must be >= 1, got {steps}")
    if track_every < 1 or steps % track_every:
        raise ValueError(f"track_every must be >= 1 and divide steps={steps}, got {track_every}")
    if not weight_decay >= 0:
        raise ValueError(f"weight_decay must be >= 0, got {weight_decay}")
    if not 0 <= momentum < 1:
        raise ValueError(f"momentum must lie in [0, 1), got {momentum}")


def _finite(tree: Params) -> jax.Array:
    return jnp.all(jnp.stack([jnp.all(jnp.isfinite(leaf)) for leaf in jax.tree.leaves(tree)]))


def make_chunk(
    loss_fn: LossFn,
    lr: float,
    chunk: int,
    *,
    weight_decay: float = 0.0,
    momentum: float = 0.0,
    twin_k: int | None = None,
) -> tuple[Callable, Callable]:
    """A jitted function running ``chunk`` GD steps (one copy, or two in lockstep).

    Returns ``(init, run)``: ``init(params)`` builds the carry, ``run(carry)`` returns the new
    carry and, per step, the loss before the step and (twin only) ``D`` and the relative
    Euclidean distance of the copies after it.
    """
    opt_a = perturbed_sgd(lr, k=1, momentum=momentum, weight_decay=weight_decay)
    opt_b = None
    if twin_k:
        opt_b = perturbed_sgd(lr, k=twin_k, momentum=momentum, weight_decay=weight_decay)
    value_and_grad = jax.value_and_grad(loss_fn)

    def init(params: Params) -> Any:
        carry = (params, opt_a.init(params))
        return (carry, (params, opt_b.init(params))) if twin_k else (carry,)

    def step(carry, _):
        (pa, sa) = carry[0]
        la, ga = value_and_grad(pa)
        ua, sa = opt_a.update(ga, sa, pa)
        pa = optax.apply_updates(pa, ua)
        if not twin_k:
            return ((pa, sa),), (la, jnp.zeros(()), jnp.zeros(()))
        (pb, sb) = carry[1]
        _, gb = value_and_grad(pb)
        ub, sb = opt_b.update(gb, sb, pb)
        pb = optax.apply_updates(pb, ub)
        rel = tree_distance(pa, pb) / tree_distance(pa, jax.tree.map(jnp.zeros_like, pa))
        return ((pa, sa), (pb, sb)), (la, relative_l1(pa, pb), rel)

    @jax.jit
    def run(carry):
        return jax.lax.scan(step, carry, None, length=chunk)

    return init, run


def train_gd(
    loss_fn: LossFn,
    params: Params,
    lr: float,
    steps: int,
    *,
    weight_decay: float = 0.0,
    momentum: float = 0.0,
    track_every: int = 10,
    twin_k: int | None = None,
    sharpness_fn: SharpnessFn | None = None,
) -> GDRun:
    """Full-batch GD for ``steps`` steps, measuring the sharpness every ``track_every`` steps.

    ``sharpness_fn`` defaults to :func:`lobpcg_sharpness` (warm-started LOBPCG). With
    ``twin_k`` a second copy with the k-trick runs in lockstep and ``D`` is recorded. A run
    that becomes non-finite stops there: the remaining entries of the record are NaN.
    """
    _check_train(lr, steps, track_every, weight_decay, momentum)
    if twin_k is not None and (isinstance(twin_k, bool) or int(twin_k) != twin_k or twin_k < 2):
        raise ValueError(f"twin_k must be an integer >= 2 or None, got {twin_k}")
    sharpness_fn = sharpness_fn or lobpcg_sharpness()
    init, run = make_chunk(
        loss_fn, lr, track_every, weight_decay=weight_decay, momentum=momentum, twin_k=twin_k
    )
    n_chunks = steps // track_every
    loss = np.full(steps, np.nan)
    div = np.full(steps, np.nan) if twin_k else None
    sep = np.full(steps, np.nan) if twin_k else None
    sharp = np.full(n_chunks + 1, np.nan)
    hvps = np.zeros(n_chunks + 1, np.int64)
    carry, warm, diverged_at = init(params), None, -1
    for c in range(n_chunks):
        lam, warm, used = sharpness_fn(loss_fn, carry[0][0], warm)
        sharp[c], hvps[c] = lam, used
        carry, (ls, ds, rs) = run(carry)
        sl = slice(c * track_every, (c + 1) * track_every)
        loss[sl] = np.asarray(ls)
        if twin_k:
            div[sl], sep[sl] = np.asarray(ds), np.asarray(rs)
        if not bool(_finite(carry[0][0])):
            bad = np.flatnonzero(~np.isfinite(loss[sl]))
            diverged_at = c * track_every + (int(bad[0]) if bad.size else track_every)
            break
    else:
        lam, _, used = sharpness_fn(loss_fn, carry[0][0], warm)
        sharp[n_chunks], hvps[n_chunks] = lam, used
    return GDRun(
        lr=float(lr),
        weight_decay=float(weight_decay),
        momentum=float(momentum),
        loss=loss,
        tracked_steps=np.arange(n_chunks + 1) * track_every,
        sharpness=sharp,
        hvps=hvps,
        divergence=div,
        diverged_at=diverged_at,
        final_params=carry[0][0],
        separation=sep,
    )


# -------------------------------------------------------------------------- gradient flow


def rk4_flow(loss_fn: LossFn, weight_decay: float = 0.0) -> Callable:
    r"""One classical RK4 step ``(theta, h) -> theta(t + h)`` of :math:`\dot\theta = -\nabla F`."""
    grad = jax.grad(loss_fn)

    def field_(p: Params) -> Params:
        g = grad(p)
        if weight_decay:
            g = jax.tree.map(lambda gi, pi: gi + weight_decay * pi, g, p)
        return jax.tree.map(jnp.negative, g)

    def axpy(a, x, y):
        return jax.tree.map(lambda xi, yi: yi + a * xi, x, y)

    def step(p: Params, h: float) -> Params:
        k1 = field_(p)
        k2 = field_(axpy(h / 2, k1, p))
        k3 = field_(axpy(h / 2, k2, p))
        k4 = field_(axpy(h, k3, p))
        incr = jax.tree.map(lambda a, b, c, d: (a + 2 * b + 2 * c + d) / 6, k1, k2, k3, k4)
        return axpy(h, incr, p)

    return step


def tree_distance(a: Params, b: Params) -> jax.Array:
    """Euclidean distance between two parameter pytrees."""
    sq = jax.tree.map(lambda x, y: jnp.sum((x - y) ** 2), a, b)
    return jnp.sqrt(sum(jax.tree.leaves(sq)))


@dataclass(frozen=True)
class FlowComparison:
    """GD against gradient flow at equal times t = lr·n, recorded every ``every`` steps."""

    steps: np.ndarray
    time: np.ndarray
    distance: np.ndarray  # ||theta_GD(n) - theta_GF(lr n)||
    relative: np.ndarray  # distance / ||theta_GF(lr n) - theta_0||
    flow_loss: np.ndarray


def gradient_flow_distance(
    loss_fn: LossFn,
    params: Params,
    lr: float,
    steps: int,
    *,
    every: int = 10,
    substeps: int = 4,
    weight_decay: float = 0.0,
) -> FlowComparison:
    """Run GD and an RK4 gradient flow (``substeps`` RK4 steps per GD step) side by side."""
    _check_train(lr, steps, every, weight_decay, 0.0)
    if substeps < 1:
        raise ValueError(f"substeps must be >= 1, got {substeps}")
    rk4 = rk4_flow(loss_fn, weight_decay)
    opt = perturbed_sgd(lr, weight_decay=weight_decay)
    grad = jax.grad(loss_fn)
    h = lr / substeps

    @jax.jit
    def chunk(carry):
        def one(c, _):
            pg, s, pf = c
            u, s = opt.update(grad(pg), s, pg)
            pg = optax.apply_updates(pg, u)
            pf = jax.lax.fori_loop(0, substeps, lambda _, p: rk4(p, h), pf)
            return (pg, s, pf), None

        carry, _ = jax.lax.scan(one, carry, None, length=every)
        return carry, tree_distance(carry[0], carry[2]), tree_distance(carry[2], params)

    carry = (params, opt.init(params), params)
    n = steps // every
    dist, moved, floss = np.zeros(n), np.zeros(n), np.zeros(n)
    for c in range(n):
        carry, d, m = chunk(carry)
        dist[c], moved[c], floss[c] = float(d), float(m), float(loss_fn(carry[2]))
    recorded = np.arange(1, n + 1) * every
    return FlowComparison(
        steps=recorded,
        time=recorded * lr,
        distance=dist,
        relative=dist / np.where(moved > 0, moved, 1.0),
        flow_loss=floss,
    )


# ------------------------------------------------------------------------ onset detection


def first_crossing(steps: Any, values: Any, level: float) -> float:
    """First step at which ``values`` reaches ``level``, linearly interpolated; NaN if never."""
    steps, values = np.asarray(steps, np.float64), np.asarray(values, np.float64)
    if steps.shape != values.shape or steps.ndim != 1:
        raise ValueError("steps and values must be 1-D arrays of equal length")
    above = np.flatnonzero(values >= level)
    if not above.size:
        return float("nan")
    i = int(above[0])
    if i == 0:
        return float(steps[0])
    s0, s1, v0, v1 = steps[i - 1], steps[i], values[i - 1], values[i]
    return float(s0 + (level - v0) * (s1 - s0) / (v1 - v0))


def sharpening_crossing(steps: Any, values: Any, level: float) -> float:
    """First crossing of ``level`` after the early dip: the end of progressive sharpening.

    Sharpness often drops during the first steps (also in Cohen et al.'s runs) before it
    rises. The search starts at the minimum of ``values`` over the first half of the record,
    so a start above ``level`` is not counted as reaching the edge.
    """
    steps, values = np.asarray(steps, np.float64), np.asarray(values, np.float64)
    j = int(np.nanargmin(values[: max(1, values.size // 2)]))
    return first_crossing(steps[j:], values[j:], level)


def divergence_onset(divergence: Any, threshold: float) -> int:
    """First step (1-based) after which ``D`` exceeds ``threshold``; -1 if it never does."""
    d = np.asarray(divergence, np.float64)
    hits = np.flatnonzero(d > threshold)
    return int(hits[0]) + 1 if hits.size else -1


def load_run(arrays: Any, prefix: str) -> GDRun:
    """A :class:`GDRun` from the arrays ``results/eos_experiments.py`` saved under ``prefix``."""
    lr, wd, mu, dead = (float(v) for v in arrays[f"{prefix}/config"])
    div_key, sep_key = f"{prefix}/divergence", f"{prefix}/separation"
    return GDRun(
        lr=lr,
        weight_decay=wd,
        momentum=mu,
        loss=np.asarray(arrays[f"{prefix}/loss"]),
        tracked_steps=np.asarray(arrays[f"{prefix}/tracked_steps"]),
        sharpness=np.asarray(arrays[f"{prefix}/sharpness"]),
        hvps=np.asarray(arrays[f"{prefix}/hvps"]),
        divergence=np.asarray(arrays[div_key]) if div_key in arrays else None,
        diverged_at=int(dead),
        final_params=None,
        separation=np.asarray(arrays[sep_key]) if sep_key in arrays else None,
    )


def plateau(run: GDRun, start: int) -> np.ndarray:
    """Effective sharpness divided by the threshold, at tracked steps >= ``start``."""
    keep = (run.tracked_steps >= start) & np.isfinite(run.sharpness)
    return run.effective_sharpness[keep] / run.threshold


# ------------------------------------------------------------ Damian et al.'s 2-D map


def self_stabilization_map(
    x0: float, y0: float, lr: float, alpha: float, beta: float, steps: int
) -> tuple[np.ndarray, np.ndarray]:
    r"""Damian, Nichani & Lee's reduced dynamics (their eq. 3), float64.

    :math:`x_{t+1} = -(1 + \eta y_t)\,x_t`, :math:`y_{t+1} = y_t + \eta(\alpha - \beta x_t^2/2)`:
    ``x`` is the displacement along the top eigenvector, ``y`` the sharpness minus
    :math:`2/\eta`; :math:`\alpha > 0` is the progressive-sharpening force, :math:`\beta > 0`
    the self-stabilisation strength. Returns the two sequences (length ``steps + 1``); a
    run that overflows is NaN from there on.
    """
    if not (lr > 0 and alpha > 0 and beta > 0):
        raise ValueError(f"lr, alpha and beta must be > 0, got {lr}, {alpha}, {beta}")
    if steps < 1:
        raise ValueError(f"steps must be >= 1, got {steps}")
    x, y = np.full(steps + 1, np.nan), np.full(steps + 1, np.nan)
    x[0], y[0] = x0, y0
    with np.errstate(over="ignore", invalid="ignore"):
        for t in range(steps):
            x[t + 1] = -(1.0 + lr * y[t]) * x[t]
            y[t + 1] = y[t] + lr * (alpha - beta * x[t] ** 2 / 2.0)
            if not (np.isfinite(x[t + 1]) and np.isfinite(y[t + 1])):
                x[t + 1] = y[t + 1] = np.nan
                break
    return x, y
