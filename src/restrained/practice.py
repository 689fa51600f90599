r"""Small tools for chapter 10: schedules as stability control, per-layer sharpness, precision.

* :func:`scheduled_twins`: full-batch gradient descent with a learning-rate schedule
  :math:`\eta_t`, run as a k = 1 / k = 3 pair (:math:`\theta \leftarrow \theta -
  \operatorname{fl}(\eta_t k)\,(g / k)`), recording the loss and ``D`` at every step.
* :func:`layer_sharpness`: the top eigenvalue of each parameter tensor's diagonal Hessian
  block, :math:`\lambda_\ell = \lambda_{\max}(\nabla^2_{\theta_\ell} L)`, by power
  iteration on Hessian-vector products; :math:`2/\lambda_\ell` is that layer's local step
  limit.
* :func:`warmup_schedule`: linear warm-up to a peak, then constant.
"""

from __future__ import annotations

import functools
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from restrained.fp import ieee_divide, relative_l1


def warmup_schedule(peak: float, steps: int, warmup: int) -> np.ndarray:
    """float32 learning rates: ``peak * (t + 1) / warmup`` for ``t < warmup``, then ``peak``.

    Raises:
        ValueError: if ``peak <= 0``, ``steps < 1`` or ``warmup`` is not in ``[0, steps]``.
    """
    if not peak > 0:
        raise ValueError(f"peak must be > 0, got {peak}")
    if steps < 1:
        raise ValueError(f"steps must be >= 1, got {steps}")
    if not 0 <= warmup <= steps:
        raise ValueError(f"warmup must lie in [0, {steps}], got {warmup}")
    t = np.arange(steps, dtype=np.float64)
    ramp = np.minimum((t + 1) / max(warmup, 1), 1.0) if warmup else np.ones(steps)
    return (peak * ramp).astype(np.float32)


@functools.lru_cache(maxsize=16)
def _twin_runner(loss_fn: Any, k: int) -> Any:
    """The jitted lockstep scan, compiled once per loss function and ``k``."""
    grad = jax.value_and_grad(loss_fn)
    kf = jnp.float32(k)

    def step(carry, rate):
        a, b = carry
        lr, lr_k = rate
        loss_a, ga = grad(a)
        _, gb = grad(b)
        a = jax.tree_util.tree_map(lambda p, g: p - lr * g, a, ga)
        b = jax.tree_util.tree_map(lambda p, g: p - lr_k * ieee_divide(g, kf), b, gb)
        return (a, b), (loss_a, relative_l1(a, b))

    return jax.jit(lambda p, rates, steps_k: jax.lax.scan(step, (p, p), (rates, steps_k)))


def scheduled_twins(
    loss_fn: Any, params: Any, schedule: np.ndarray, k: int = 3
) -> dict[str, np.ndarray]:
    """Full-batch GD of a k = 1 / k pair with per-step rates ``schedule``.

    Returns ``loss`` (of the k = 1 copy, before each step), ``D`` (after each step),
    ``finite`` (False if the k = 1 copy produced non-finite values) and the final
    parameters of both copies (``params_1``, ``params_k``).
    """
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    rates = jnp.asarray(schedule, jnp.float32)
    steps_k = jnp.asarray(np.asarray(schedule, np.float64) * k, jnp.float32)
    (a, b), (loss, d) = _twin_runner(loss_fn, int(k))(params, rates, steps_k)
    finite = all(bool(jnp.all(jnp.isfinite(x))) for x in jax.tree_util.tree_leaves(a))
    return {
        "loss": np.asarray(loss),
        "D": np.asarray(d),
        "finite": np.asarray(finite),
        "params_1": a,
        "params_k": b,
    }


def layer_sharpness(
    loss_fn: Any, params: Any, iterations: int = 30, key: jax.Array | None = None
) -> dict[str, float]:
    r"""Top eigenvalue of each leaf's diagonal Hessian block, by ``iterations`` power steps.

    Power iteration converges to the eigenvalue of largest *magnitude*; near a trained or
    freshly initialised network the top blocks are dominated by positive curvature.
    """
    if iterations < 1:
        raise ValueError(f"iterations must be >= 1, got {iterations}")
    from restrained.train import layer_names

    names = layer_names(params)
    leaves, treedef = jax.tree_util.tree_flatten(params)
    key = jax.random.PRNGKey(0) if key is None else key
    out = {}
    for i, name in enumerate(names):

        def block_loss(w, i=i):
            new = list(leaves)
            new[i] = w
            return loss_fn(jax.tree_util.tree_unflatten(treedef, new))

        g = jax.grad(block_loss)

        @jax.jit
        def power(v, w=leaves[i], g=g):
            def body(v, _):
                hv = jax.jvp(g, (w,), (v,))[1]
                return hv / jnp.linalg.norm(hv), jnp.vdot(v, hv)

            v, rayleigh = jax.lax.scan(body, v / jnp.linalg.norm(v), None, length=iterations)
            return rayleigh[-1]

        v0 = jax.random.normal(jax.random.fold_in(key, i), leaves[i].shape, leaves[i].dtype)
        out[name] = float(power(v0))
    return out
