r"""Finite differences for the heat equation with decay, :math:`u_t = u_{xx} - \alpha u`.

The book's first model problem (chapter 2). On a grid :math:`x_j = j\,\Delta x`,
:math:`j = 0, \dots, N-1`, with the end values held fixed (Dirichlet), and with the mesh
ratio :math:`r = \Delta t/\Delta x^2`:

* **explicit (forward) Euler**, central differences in space,

  .. math:: u^{n+1}_j = u^n_j + r\,(u^n_{j+1} - 2u^n_j + u^n_{j-1}) - \alpha\Delta t\,u^n_j;

* **implicit (backward) Euler**, the same stencil applied to :math:`u^{n+1}`:

  .. math:: u^{n+1}_j - r\,(u^{n+1}_{j+1} - 2u^{n+1}_j + u^{n+1}_{j-1})
            + \alpha\Delta t\,u^{n+1}_j = u^n_j.

Von Neumann analysis substitutes :math:`u^n_j = \xi^n e^{i\omega j\Delta x}` and gives the
amplification factors

.. math:: \xi_{\rm exp}(\omega) = 1 - \alpha\Delta t - 4r\sin^2\tfrac{\omega\Delta x}{2},
          \qquad
          \xi_{\rm imp}(\omega)
          = \Big(1 + \alpha\Delta t + 4r\sin^2\tfrac{\omega\Delta x}{2}\Big)^{-1}.

On the finite Dirichlet grid the eigenvectors are the sine modes
:math:`\sin(k\pi j/(N-1))`, :math:`k = 1, \dots, N-2`, with Laplacian eigenvalues
:math:`\mu_k = (4/\Delta x^2)\sin^2(k\pi/(2(N-1)))`; the scheme multiplies mode :math:`k`
by :math:`\xi` evaluated at :math:`\omega_k = k\pi/((N-1)\Delta x)`. The explicit scheme is
stable (no mode grows) iff :math:`\Delta t\,(\alpha + \mu_{\max}) \le 2`, which tends to
the von Neumann bound :math:`\Delta t \le 2/(\alpha + 4/\Delta x^2)` as the grid is refined;
for :math:`\alpha = 0` that is :math:`\Delta t \le \Delta x^2/2`.

Everything runs in JAX, in the dtype of the initial condition (float32 by default).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import partial
from typing import Literal

import jax
import jax.numpy as jnp
import numpy as np

Scheme = Literal["explicit", "implicit"]
SCHEMES = ("explicit", "implicit")


def _check_positive(name: str, value: float) -> float:
    value = float(value)
    if not (math.isfinite(value) and value > 0):
        raise ValueError(f"{name} must be a finite number > 0, got {value!r}")
    return value


def _check_alpha(alpha: float) -> float:
    alpha = float(alpha)
    if not math.isfinite(alpha):
        raise ValueError(f"alpha must be a finite number, got {alpha!r}")
    return alpha


def _check_points(n_points: int) -> int:
    if isinstance(n_points, bool) or int(n_points) != n_points or n_points < 3:
        raise ValueError(
            f"n_points must be an integer >= 3 (two ends and one interior point), got {n_points!r}"
        )
    return int(n_points)


def _check_scheme(scheme: str) -> str:
    if scheme not in SCHEMES:
        raise ValueError(f"scheme must be one of {SCHEMES}, got {scheme!r}")
    return scheme


def _check_steps(name: str, steps: int, minimum: int = 1) -> int:
    if isinstance(steps, bool) or int(steps) != steps or steps < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {steps!r}")
    return int(steps)


def tent(n_points: int = 31, slope: float = 0.1) -> np.ndarray:
    """The authors' initial condition (``heat.py``): a tent of the given slope, zero at both ends.

    ``u0[i] = slope * i`` for ``i < m`` and ``slope * (n_points - 1 - i)`` otherwise, with
    ``m = (n_points - 1) // 2``; for 31 points the peak is ``u0[15] = 1.5``. float32.
    """
    n = _check_points(n_points)
    slope = _check_positive("slope", slope)
    i = np.arange(n)
    m = (n - 1) // 2
    return np.where(i < m, slope * i, slope * (n - 1 - i)).astype(np.float32)


def mode_frequencies(n_points: int, dx: float) -> np.ndarray:
    r"""Frequencies :math:`\omega_k = k\pi/((N-1)\Delta x)`, :math:`k=1..N-2`, of the sine modes."""
    n, dx = _check_points(n_points), _check_positive("dx", dx)
    k = np.arange(1, n - 1)
    return k * np.pi / ((n - 1) * dx)


def laplacian_eigenvalues(n_points: int, dx: float) -> np.ndarray:
    r"""Eigenvalues :math:`\mu_k = (4/\Delta x^2)\sin^2(k\pi/(2(N-1)))` of the grid's
    :math:`-\partial_{xx}`, ascending."""
    n, dx = _check_points(n_points), _check_positive("dx", dx)
    k = np.arange(1, n - 1)
    return 4.0 / dx**2 * np.sin(k * np.pi / (2 * (n - 1))) ** 2


def amplification_factor(
    omega: np.ndarray | float,
    dt: float,
    dx: float,
    alpha: float = 0.0,
    scheme: Scheme = "explicit",
) -> np.ndarray:
    r"""Von Neumann amplification factor :math:`\xi(\omega)` of one step (float64)."""
    dt, dx = _check_positive("dt", dt), _check_positive("dx", dx)
    alpha, scheme = _check_alpha(alpha), _check_scheme(scheme)
    omega = np.asarray(omega, dtype=np.float64)
    if not np.all(np.isfinite(omega)):
        raise ValueError("omega must be finite")
    symbol = alpha * dt + 4.0 * dt / dx**2 * np.sin(omega * dx / 2) ** 2
    return 1.0 - symbol if scheme == "explicit" else 1.0 / (1.0 + symbol)


def max_amplification(
    dt: float,
    dx: float,
    alpha: float = 0.0,
    scheme: Scheme = "explicit",
    n_points: int | None = None,
) -> float:
    r"""Largest :math:`|\xi|`: over all :math:`\omega` (von Neumann, ``n_points=None``) or over the
    Dirichlet grid's sine modes."""
    dt, dx = _check_positive("dt", dt), _check_positive("dx", dx)
    if n_points is None:
        omega = np.array([0.0, np.pi / dx])  # xi is monotone in sin^2, so the ends suffice
    else:
        omega = mode_frequencies(n_points, dx)
    return float(np.max(np.abs(amplification_factor(omega, dt, dx, alpha, scheme))))


def critical_dt(dx: float, alpha: float = 0.0, n_points: int | None = None) -> float:
    r"""Largest stable time step of the explicit scheme, :math:`2/(\alpha + \mu_{\max})`.

    With ``n_points=None`` it is the von Neumann bound :math:`\mu_{\max} = 4/\Delta x^2`
    (so :math:`\Delta x^2/2` at :math:`\alpha = 0`); otherwise the finite Dirichlet grid's
    largest Laplacian eigenvalue. Requires ``alpha > -mu_max`` (else no step is stable
    against the top mode); for ``alpha < -mu_min`` even the continuous problem grows.
    """
    dx, alpha = _check_positive("dx", dx), _check_alpha(alpha)
    mu_max = 4.0 / dx**2 if n_points is None else float(laplacian_eigenvalues(n_points, dx)[-1])
    if alpha + mu_max <= 0:
        raise ValueError(f"alpha must be > -{mu_max:g} for a stable explicit step, got {alpha!r}")
    return 2.0 / (alpha + mu_max)


def _second_difference(u: jax.Array, dx: float) -> jax.Array:
    inner = (u[2:] - 2 * u[1:-1] + u[:-2]) / jnp.asarray(dx * dx, u.dtype)
    return jnp.zeros_like(u).at[1:-1].set(inner)


def explicit_step(u: jax.Array, dt: float, dx: float, alpha: float = 0.0) -> jax.Array:
    """One forward-Euler step; the end values are held fixed (as in the authors' ``heat.py``)."""
    u = jnp.asarray(u)
    rhs = _second_difference(u, dx)
    rhs = rhs.at[1:-1].add(-jnp.asarray(alpha, u.dtype) * u[1:-1])
    return u + jnp.asarray(dt, u.dtype) * rhs


def implicit_matrix(n_points: int, dt: float, dx: float, alpha: float = 0.0) -> np.ndarray:
    r"""The matrix :math:`A` of backward Euler, :math:`A u^{n+1} = u^n`; ends held."""
    n = _check_points(n_points)
    dt, dx, alpha = _check_positive("dt", dt), _check_positive("dx", dx), _check_alpha(alpha)
    r = dt / dx**2
    a = np.eye(n)
    for j in range(1, n - 1):
        a[j, j - 1 : j + 2] = [-r, 1 + 2 * r + alpha * dt, -r]
    return a


@dataclass(frozen=True)
class Solution:
    """A finite-difference run: ``u[n]`` is the grid function after ``n`` steps.

    If the run overflowed, ``u`` stops at the last finite step and ``diverged_at`` is the
    first step whose values were not finite (a result, not an error).
    """

    u: np.ndarray
    dt: float
    dx: float
    alpha: float
    scheme: str
    diverged_at: int | None

    @property
    def times(self) -> np.ndarray:
        """PDE time ``n * dt`` of each stored step."""
        return np.arange(len(self.u)) * self.dt

    def at_time(self, t: float) -> np.ndarray:
        """The stored step nearest to time ``t`` (``round(t / dt)``)."""
        n = round(float(t) / self.dt)
        if not 0 <= n < len(self.u):
            raise ValueError(f"t must lie in [0, {(len(self.u) - 1) * self.dt:g}], got {t!r}")
        return self.u[n]


@partial(jax.jit, static_argnames=("steps", "scheme"))
def _run(u0, dt, dx, alpha, steps, scheme, lu, piv):
    def body(u, _):
        if scheme == "explicit":
            new = explicit_step(u, dt, dx, alpha)
        else:
            new = jax.scipy.linalg.lu_solve((lu, piv), u)
        return new, new

    _, history = jax.lax.scan(body, u0, None, length=steps)
    return jnp.concatenate([u0[None], history])


def _check_u0(u0: np.ndarray | jax.Array) -> jax.Array:
    u0 = jnp.asarray(u0)
    if u0.ndim != 1 or u0.shape[0] < 3:
        raise ValueError(f"u0 must be a 1-D grid function with >= 3 points, got shape {u0.shape}")
    if not jnp.issubdtype(u0.dtype, jnp.floating):
        u0 = u0.astype(jnp.float32)
    if not bool(jnp.all(jnp.isfinite(u0))):
        raise ValueError("u0 must be finite")
    return u0


def solve(
    u0: np.ndarray | jax.Array,
    dt: float,
    steps: int,
    dx: float = 1.0,
    alpha: float = 0.0,
    scheme: Scheme = "explicit",
) -> Solution:
    """Run ``steps`` steps of a scheme from ``u0`` (dtype kept) and keep every step."""
    u0 = _check_u0(u0)
    dt, dx = _check_positive("dt", dt), _check_positive("dx", dx)
    alpha, scheme = _check_alpha(alpha), _check_scheme(scheme)
    steps = _check_steps("steps", steps)
    lu = piv = None
    if scheme == "implicit":
        lu, piv = jax.scipy.linalg.lu_factor(
            jnp.asarray(implicit_matrix(u0.shape[0], dt, dx, alpha), u0.dtype)
        )
    u = np.asarray(_run(u0, dt, dx, alpha, steps, scheme, lu, piv))
    finite = np.all(np.isfinite(u), axis=1)
    diverged_at = None if finite.all() else int(np.argmin(finite))
    if diverged_at is not None:
        u = u[:diverged_at]
    return Solution(u=u, dt=dt, dx=dx, alpha=alpha, scheme=scheme, diverged_at=diverged_at)


@partial(jax.jit, static_argnames=("n_points", "steps", "tail", "scheme"))
def _growth_rates(dts, alphas, dx, key, n_points, steps, tail, scheme):
    interior = n_points - 2
    u0 = jax.random.normal(key, (interior,), jnp.float32)
    u0 = u0 / jnp.linalg.norm(u0)
    r_off = jnp.ones(interior - 1, jnp.float32)

    def one(dt, alpha):
        r = dt / (dx * dx)
        if scheme == "explicit":
            diag = 1 - 2 * r - alpha * dt

            def apply(u):
                shifted = jnp.zeros_like(u).at[1:].add(u[:-1]).at[:-1].add(u[1:])
                return diag * u + r * shifted
        else:
            a = (
                jnp.diag(jnp.full(interior, 1 + 2 * r + alpha * dt))
                - r * jnp.diag(r_off, 1)
                - r * jnp.diag(r_off, -1)
            )
            lu_piv = jax.scipy.linalg.lu_factor(a)

            def apply(u):
                return jax.scipy.linalg.lu_solve(lu_piv, u)

        def body(i, carry):
            u, log_sum = carry
            v = apply(u)
            norm = jnp.linalg.norm(v)
            log_sum = log_sum + jnp.where(i >= steps - tail, jnp.log(norm), 0.0)
            return v / norm, log_sum

        _, log_sum = jax.lax.fori_loop(0, steps, body, (u0, jnp.float32(0)))
        return jnp.exp(log_sum / tail)

    return jax.vmap(one)(dts, alphas)


def growth_rates(
    dts: np.ndarray | list[float],
    alphas: np.ndarray | list[float] | float = 0.0,
    *,
    dx: float = 1.0,
    n_points: int = 31,
    scheme: Scheme = "explicit",
    steps: int = 3000,
    tail: int = 500,
    seed: int = 0,
) -> np.ndarray:
    r"""Measured per-step growth factor of the scheme, for each ``(dt, alpha)`` pair.

    A power iteration: start from a random interior vector (ends at zero), apply the
    scheme ``steps`` times, renormalising after each step so nothing overflows, and return
    the geometric mean of :math:`\lVert u^{n+1}\rVert/\lVert u^n\rVert` over the last
    ``tail`` steps. For a linear scheme with orthogonal modes this converges to the largest
    :math:`|\xi_k|` on the grid; a value above 1 means the scheme amplifies some mode.
    """
    dts = np.atleast_1d(np.asarray(dts, np.float64))
    alphas = np.broadcast_to(np.asarray(alphas, np.float64), dts.shape)
    for dt in dts:
        _check_positive("dt", dt)
    for alpha in alphas:
        _check_alpha(alpha)
    dx = _check_positive("dx", dx)
    n_points = _check_points(n_points)
    scheme = _check_scheme(scheme)
    steps = _check_steps("steps", steps)
    tail = _check_steps("tail", tail)
    if tail > steps:
        raise ValueError(f"tail must be <= steps ({steps}), got {tail}")
    rates = _growth_rates(
        jnp.asarray(dts, jnp.float32),
        jnp.asarray(alphas, jnp.float32),
        jnp.float32(dx),
        jax.random.key(seed),
        n_points,
        steps,
        tail,
        scheme,
    )
    return np.asarray(rates, np.float64)


def perturbation_growth(
    u0: np.ndarray | jax.Array,
    dt: float,
    steps: int,
    dx: float = 1.0,
    alpha: float = 0.0,
    index: int | None = None,
) -> tuple[np.ndarray, Solution, Solution]:
    r"""Max-norm difference, step by step, between two explicit runs whose initial conditions
    differ by one ulp at grid point ``index`` (the peak of ``u0`` by default).

    Returns ``(diff, base, perturbed)`` where ``diff[n] = max_j |u_j^n - \tilde u_j^n|`` up to
    the first step at which either run overflowed.
    """
    u0 = _check_u0(u0)
    if index is None:
        index = int(jnp.argmax(jnp.abs(u0)))
    if not 0 < index < u0.shape[0] - 1:
        raise ValueError(f"index must be an interior point in [1, {u0.shape[0] - 2}], got {index}")
    bumped = u0.at[index].set(jnp.nextafter(u0[index], jnp.asarray(jnp.inf, u0.dtype)))
    base = solve(u0, dt, steps, dx, alpha)
    pert = solve(bumped, dt, steps, dx, alpha)
    n = min(len(base.u), len(pert.u))
    diff = np.max(np.abs(base.u[:n].astype(np.float64) - pert.u[:n]), axis=1)
    return diff, base, pert
