r"""Top Hessian eigenvalues ("sharpness") of a loss, with Hessian-vector products in ``jit``.

For a loss :math:`L(\theta)` and a step size :math:`\eta`, gradient descent linearised
around :math:`\theta` is the map :math:`\delta \mapsto (I - \eta H)\delta`, with
:math:`H = \nabla^2 L(\theta)`: it is locally stable iff :math:`0 < \eta\lambda_i < 2` for
every eigenvalue :math:`\lambda_i` of :math:`H`. The largest algebraic eigenvalue
:math:`\lambda_{\max}` is the *sharpness*; :math:`2/\lambda_{\max}` the largest stable step.

Tools:

* :func:`hvp` -- :math:`v\mapsto Hv` by forward-over-reverse differentiation,
  ``jax.jvp(jax.grad(L), (theta,), (v,))``: one gradient's worth of memory, never the
  :math:`n\times n` Hessian. With ``data=`` and ``chunk_size=`` the loss is the mean of
  ``loss_fn(params, chunk)`` over equal chunks, and the HVP is averaged chunk by chunk in a
  ``lax.scan`` (memory of one chunk, one compiled program).
* :func:`dense_hessian` -- the full matrix, for models with a few thousand parameters.
* :func:`top_hessian_eigs` -- the ``k`` largest **algebraic** eigenvalues (descending),
  their eigenvectors and the number of HVPs spent, by

  - ``method="lanczos"``: Lanczos with full reorthogonalisation, stopped when every wanted
    Ritz pair :math:`(\theta_i, x_i)` has residual bound :math:`|\beta_j s_{j,i}| \le
    \mathrm{tol}\,|\theta_i|` -- the convergence test of ARPACK's ``eigsh`` -- one HVP
    per step; or
  - ``method="lobpcg"``: ``jax.experimental.sparse.linalg.lobpcg_standard`` on blocks
    of ``k`` vectors, :math:`k + 4k` HVPs per iteration (vmapped, so a block costs less
    than ``k`` separate products). Its ``tol`` is JAX's scaled residual test.

  Either runs entirely inside one ``jit``: no host round trip per HVP. Pass ``init=`` (the
  previous call's eigenvectors) to warm-start, which is what makes tracking the sharpness
  during training cheap.

**Eigenvector layout.** Parameters are flattened with :func:`jax.flatten_util.ravel_pytree`;
eigenvectors are returned flat, as the columns of an ``(n, k)`` array, and
:meth:`HessianEigs.vectors_as_pytrees` turns them back into parameter pytrees. ``init``
accepts either form.

**Compilation.** The solver is compiled once per ``loss_fn`` object, ``k``, method and
shapes. Reuse the same ``loss_fn`` (and pass arrays through ``data=``) to avoid
recompiling, e.g. when tracking sharpness every few steps of training.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax.experimental.sparse.linalg import lobpcg_standard
from jax.flatten_util import ravel_pytree

Params = Any
LossFn = Callable[..., jax.Array]


def _mean_loss(loss_fn: LossFn, data: Any, chunk_size: int | None) -> Callable[[Params], jax.Array]:
    """``params -> loss``: ``loss_fn(params)``, or the chunk mean of ``loss_fn(params, c)``."""
    if data is None:
        return loss_fn
    chunks = _chunk(data, chunk_size)

    def loss(params: Params) -> jax.Array:
        def body(total: jax.Array, chunk: Any) -> tuple[jax.Array, None]:
            return total + loss_fn(params, chunk), None

        first = jax.tree.map(lambda x: x[0], chunks)
        init = jnp.zeros_like(loss_fn(params, first))
        total, _ = jax.lax.scan(body, init, chunks)
        return total / _num_chunks(chunks)

    return loss


def _num_chunks(chunks: Any) -> int:
    return jax.tree.leaves(chunks)[0].shape[0]


def _chunk(data: Any, chunk_size: int | None) -> Any:
    leaves = jax.tree.leaves(data)
    if not leaves:
        raise ValueError("data must hold at least one array")
    size = leaves[0].shape[0]
    if any(leaf.shape[0] != size for leaf in leaves):
        raise ValueError("every array in data must have the same leading (example) axis")
    chunk_size = size if chunk_size is None else chunk_size
    if not isinstance(chunk_size, int) or not 1 <= chunk_size <= size or size % chunk_size:
        raise ValueError(
            f"chunk_size must be a divisor of the number of examples {size} in [1, {size}], "
            f"got {chunk_size!r}"
        )
    return jax.tree.map(lambda x: x.reshape(size // chunk_size, chunk_size, *x.shape[1:]), data)


def _flat_hvp(
    loss_fn: LossFn, unravel: Callable, data: Any, chunk_size: int | None
) -> Callable[[jax.Array, jax.Array], jax.Array]:
    """``(flat_params, v) -> H v``, forward-over-reverse, chunked over ``data`` if given."""

    def one(loss: Callable[[Params], jax.Array], flat: jax.Array, v: jax.Array) -> jax.Array:
        grad = jax.grad(lambda w: loss(unravel(w)))
        return jax.jvp(grad, (flat,), (v,))[1]

    if data is None:
        return functools.partial(one, loss_fn)
    chunks = _chunk(data, chunk_size)

    def chunked(flat: jax.Array, v: jax.Array) -> jax.Array:
        def body(total: jax.Array, chunk: Any) -> tuple[jax.Array, None]:
            return total + one(lambda p: loss_fn(p, chunk), flat, v), None

        # XLA:CPU runs convolutions inside loops several times slower: unroll there.
        unroll = jax.default_backend() == "cpu"
        total, _ = jax.lax.scan(body, jnp.zeros_like(v), chunks, unroll=unroll)
        return total / _num_chunks(chunks)

    return chunked


def _check_scalar_loss(loss: Callable[[Params], jax.Array], params: Params) -> None:
    out = jax.eval_shape(loss, params)
    if getattr(out, "shape", None) != ():
        raise ValueError(
            f"loss_fn must return a scalar, got shape {getattr(out, 'shape', type(out))}"
        )


def hvp(
    loss_fn: LossFn, params: Params, *, data: Any = None, chunk_size: int | None = None
) -> Callable[[Params], Params]:
    """A jitted ``v -> H v`` at ``params`` (``v`` and the result are pytrees like ``params``).

    ``loss_fn(params)`` must return a scalar; with ``data`` given, ``loss_fn(params, chunk)``
    is averaged over ``chunk_size``-example chunks of ``data`` (a pytree of arrays sharing
    their leading axis).
    """
    _check_scalar_loss(_mean_loss(loss_fn, data, chunk_size), params)
    flat, unravel = ravel_pytree(params)
    product = jax.jit(_flat_hvp(loss_fn, unravel, data, chunk_size))

    def apply(v: Params) -> Params:
        return unravel(product(flat, ravel_pytree(v)[0].astype(flat.dtype)))

    return apply


def dense_hessian(
    loss_fn: LossFn, params: Params, *, data: Any = None, chunk_size: int | None = None
) -> jax.Array:
    """The full ``(n, n)`` Hessian of the flattened parameters (tiny models only)."""
    loss = _mean_loss(loss_fn, data, chunk_size)
    _check_scalar_loss(loss, params)
    flat, unravel = ravel_pytree(params)
    if flat.size > 20_000:
        raise ValueError(f"dense_hessian is for n <= 20000 parameters, got n = {flat.size}")
    return jax.jit(jax.hessian(lambda w: loss(unravel(w))))(flat)


@dataclass(frozen=True)
class HessianEigs:
    """Result of :func:`top_hessian_eigs`.

    ``values``: ``(k,)`` largest algebraic eigenvalues, descending. ``vectors``: ``(n, k)``
    unit eigenvectors of the flattened parameters, column ``i`` for ``values[i]``.
    ``num_hvps``: Hessian-vector products evaluated. ``iterations``: Lanczos steps or
    LOBPCG iterations. ``converged``: whether the tolerance was met before the cap.
    """

    values: np.ndarray
    vectors: jax.Array
    num_hvps: int
    iterations: int
    converged: bool
    method: str
    unravel: Callable[[jax.Array], Params]

    def vectors_as_pytrees(self) -> list[Params]:
        """The eigenvectors as parameter pytrees, in the order of ``values``."""
        return [self.unravel(self.vectors[:, i]) for i in range(self.vectors.shape[1])]


def _init_block(init: Any, n: int, k: int, dtype: Any, key: jax.Array) -> jax.Array:
    random = jax.random.normal(key, (n, k), dtype)
    if init is None:
        return random
    if isinstance(init, jax.Array | np.ndarray) and np.ndim(init) in (1, 2):
        block = jnp.asarray(init, dtype).reshape(n, -1) if np.shape(init)[0] == n else None
    else:
        trees = init if isinstance(init, Sequence) else [init]
        block = jnp.stack([ravel_pytree(t)[0].astype(dtype) for t in trees], axis=1)
    if block is None or block.shape[0] != n:
        raise ValueError(f"init must be (n,) / (n, m) flat vectors with n = {n}, or pytrees")
    block = block[:, :k]
    if block.shape[1] < k:
        block = jnp.concatenate([block, random[:, block.shape[1] :]], axis=1)
    # A little noise keeps the start block independent when init repeats directions.
    scale = 1e-3 * jnp.linalg.norm(block, axis=0) / jnp.sqrt(n)
    return block + scale * random


class _LanczosState(NamedTuple):
    step: jax.Array
    basis: jax.Array
    alphas: jax.Array
    betas: jax.Array
    done: jax.Array


def _lanczos_start(start: jax.Array, max_steps: int) -> _LanczosState:
    n, dtype = start.shape[0], start.dtype
    basis = jnp.zeros((max_steps + 1, n), dtype).at[0].set(start / jnp.linalg.norm(start))
    zeros = jnp.zeros(max_steps, dtype)
    return _LanczosState(jnp.asarray(0), basis, zeros, zeros, jnp.asarray(False))


def _ritz(alphas: jax.Array, betas: jax.Array, j: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Eigen-decomposition of the leading (j+1)x(j+1) block of T, padded to full size.

    The padding sits on the diagonal below a Gershgorin bound of the active block, so the
    top eigenpairs are those of the active block and the padded rows of their vectors are 0.
    """
    index = jnp.arange(alphas.shape[0])
    active = index <= j
    off = jnp.where(index < j, betas, 0.0)
    radius = jnp.abs(off) + jnp.abs(jnp.roll(off, 1).at[0].set(0.0))
    floor = jnp.min(jnp.where(active, alphas - radius, jnp.inf)) - 1.0
    diag = jnp.where(active, alphas, floor - index.astype(alphas.dtype))
    tri = jnp.diag(diag) + jnp.diag(off[:-1], 1) + jnp.diag(off[:-1], -1)
    return jnp.linalg.eigh(tri)


def _lanczos_extend(
    matvec: Callable[[jax.Array], jax.Array], state: _LanczosState
) -> tuple[_LanczosState, jax.Array]:
    """One Lanczos step with full reorthogonalisation; also returns the breakdown flag."""
    j, basis, alphas, betas, done = state
    v = basis[j]
    w = matvec(v)
    a = jnp.vdot(v, w)
    for _ in range(2):  # classical Gram-Schmidt twice against all previous vectors
        w = w - basis.T @ (basis @ w)
    b = jnp.linalg.norm(w)
    breakdown = b <= 10 * jnp.finfo(basis.dtype).eps * jnp.abs(a)
    basis = basis.at[j + 1].set(jnp.where(breakdown, 0.0, w / jnp.where(b > 0, b, 1.0)))
    alphas, betas = alphas.at[j].set(a), betas.at[j].set(b)
    return _LanczosState(j + 1, basis, alphas, betas, done | breakdown), breakdown


def _lanczos_step(
    matvec: Callable[[jax.Array], jax.Array], state: _LanczosState, k: int, tol: jax.Array
) -> _LanczosState:
    """A step plus ARPACK's test: every top-k Ritz pair has ``|beta_j s_j| <= tol |theta|``."""
    j = state.step
    state, breakdown = _lanczos_extend(matvec, state)
    theta, vecs = _ritz(state.alphas, state.betas, j)
    residual = jnp.abs(state.betas[j] * vecs[j, -k:])
    converged = (j + 1 >= k) & jnp.all(residual <= tol * jnp.abs(theta[-k:]))
    return state._replace(done=breakdown | converged)


def _lanczos_finish(state: _LanczosState, k: int) -> tuple[jax.Array, jax.Array]:
    theta, vecs = _ritz(state.alphas, state.betas, state.step - 1)
    values = theta[::-1][:k]
    vectors = state.basis[:-1].T @ vecs[:, ::-1][:, :k]
    return values, vectors / jnp.linalg.norm(vectors, axis=0)


class _UnravelKey:
    """Hashable wrapper so that ``ravel_pytree``'s unravel can be a static jit argument."""

    def __init__(self, unravel: Callable, treedef: Any, shapes: tuple) -> None:
        self.unravel, self.key = unravel, (treedef, shapes)

    def __call__(self, flat: jax.Array) -> Params:
        return self.unravel(flat)

    def __hash__(self) -> int:
        return hash(self.key)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, _UnravelKey) and self.key == other.key


_STATIC = ("loss_fn", "k", "max_iters", "chunk_size", "unravel")


def _matvec(loss_fn, flat, data, chunk_size, unravel) -> Callable[[jax.Array], jax.Array]:
    return functools.partial(_flat_hvp(loss_fn, unravel, data, chunk_size), flat)


@functools.partial(jax.jit, static_argnames=_STATIC)
def _lobpcg_solve(loss_fn, flat, block, tol, data, *, k, max_iters, chunk_size, unravel):
    blocked = jax.vmap(_matvec(loss_fn, flat, data, chunk_size, unravel), in_axes=1, out_axes=1)
    values, vectors, iters = lobpcg_standard(blocked, block, m=max_iters, tol=tol)
    order = jnp.argsort(-values)
    return values[order], vectors[:, order], iters


@functools.partial(jax.jit, static_argnames=_STATIC)
def _lanczos_device(loss_fn, flat, block, tol, data, *, k, max_iters, chunk_size, unravel):
    matvec = _matvec(loss_fn, flat, data, chunk_size, unravel)
    state = jax.lax.while_loop(
        lambda s: (s.step < max_iters) & ~s.done,
        lambda s: _lanczos_step(matvec, s, k, tol),
        _lanczos_start(jnp.sum(block, axis=1), max_iters),
    )
    return (*_lanczos_finish(state, k), state.step, state.done)


@functools.partial(jax.jit, static_argnames=("loss_fn", "chunk_size", "unravel"))
def _lanczos_host_step(loss_fn, flat, state, data, *, chunk_size, unravel):
    return _lanczos_extend(_matvec(loss_fn, flat, data, chunk_size, unravel), state)[0]


_start_jit = jax.jit(_lanczos_start, static_argnums=1)


def _host_ritz(alphas: np.ndarray, betas: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Eigenpairs of the tridiagonal T (float64, ascending), by LAPACK on the host."""
    from scipy.linalg import eigh_tridiagonal

    return eigh_tridiagonal(alphas.astype(np.float64), betas[:-1].astype(np.float64))


def _lanczos_host(loss_fn, flat, block, tol, data, *, k, max_iters, chunk_size, unravel):
    """Lanczos driven from Python: one jitted HVP + reorthogonalisation per step, the small
    tridiagonal eigenproblem and the convergence test on the host (scalars only move)."""
    state = _start_jit(jnp.sum(block, axis=1), max_iters)
    alphas, betas, converged = [], [], False
    while len(alphas) < max_iters:
        state = _lanczos_host_step(
            loss_fn, flat, state, data, chunk_size=chunk_size, unravel=unravel
        )
        j = len(alphas)
        alphas.append(float(state.alphas[j]))
        betas.append(float(state.betas[j]))
        theta, vecs = _host_ritz(np.array(alphas), np.array(betas))
        if bool(state.done):  # breakdown: the Krylov space is invariant, Ritz pairs are exact
            converged = True
            break
        if j + 1 >= k:
            residual = np.abs(betas[-1] * vecs[-1, -k:])
            if np.all(residual <= float(tol) * np.abs(theta[-k:])):
                converged = True
                break
    steps = len(alphas)
    ritz_vectors = jnp.asarray(vecs[:, ::-1][:, :k], flat.dtype)
    vectors = state.basis[:steps].T @ ritz_vectors
    values = jnp.asarray(theta[::-1][:k], flat.dtype)
    return values, vectors / jnp.linalg.norm(vectors, axis=0), steps, converged


def _static_unravel(params: Params, unravel: Callable) -> _UnravelKey:
    shapes = tuple((x.shape, str(x.dtype)) for x in jax.tree.leaves(params))
    return _UnravelKey(unravel, jax.tree.structure(params), shapes)


def top_hessian_eigs(
    loss_fn: LossFn,
    params: Params,
    k: int = 1,
    *,
    method: str = "lanczos",
    tol: float | None = None,
    max_iters: int | None = None,
    init: Any = None,
    key: jax.Array | None = None,
    data: Any = None,
    chunk_size: int | None = None,
    loop: str = "auto",
) -> HessianEigs:
    r"""The ``k`` largest algebraic eigenvalues of :math:`\nabla^2 L` at ``params``, descending.

    Args:
        loss_fn: ``params -> scalar``; with ``data``, ``(params, chunk) -> scalar`` whose
            mean over the chunks of ``data`` is the loss.
        params: the parameter pytree where the Hessian is taken.
        k: how many eigenpairs, ``1 <= k < n`` (``n`` = number of parameters).
        method: ``"lanczos"`` (default) or ``"lobpcg"`` (needs ``5 k < n``).
        tol: Lanczos: stop when every residual bound is ``<= tol * |theta|`` (default 1e-6,
            the criterion of ARPACK's ``eigsh``). LOBPCG: JAX's scaled residual tolerance
            (default: the float epsilon).
        max_iters: cap on Lanczos steps (default ``min(n, 200)``) or LOBPCG iterations
            (default 100).
        init: warm start, e.g. ``previous.vectors``: an ``(n,)`` / ``(n, m)`` flat array,
            a parameter pytree or a list of them.
        key: PRNG key for the random start (default ``PRNGKey(0)``).
        data, chunk_size: see :func:`hvp`.
        loop: Lanczos only. ``"device"``: the whole iteration in one ``jit`` (a
            ``lax.while_loop``); ``"host"``: one jitted step per HVP driven from Python,
            arrays staying on the device. ``"auto"`` picks ``"host"`` on CPU, where XLA runs
            convolutions inside a ``while_loop`` several times slower than at top level.

    Returns:
        :class:`HessianEigs` with ``values`` (descending), flat ``vectors`` ``(n, k)``,
        ``num_hvps``, ``iterations`` and ``converged``.

    Raises:
        ValueError: for a non-scalar loss, ``k`` outside ``[1, n)``, an unknown method, or
            ``method="lobpcg"`` with ``5 k >= n``.
    """
    flat, unravel = ravel_pytree(params)
    n = int(flat.size)
    _check_scalar_loss(_mean_loss(loss_fn, data, chunk_size), params)
    if not isinstance(k, int | np.integer) or not 1 <= k < n:
        raise ValueError(f"k must be an integer in [1, {n - 1}] (n = {n} parameters), got {k!r}")
    if loop not in ("auto", "host", "device"):
        raise ValueError(f"loop must be 'auto', 'host' or 'device', got {loop!r}")
    if method not in ("lanczos", "lobpcg"):
        raise ValueError(f"method must be 'lanczos' or 'lobpcg', got {method!r}")
    if method == "lobpcg" and 5 * k >= n:
        raise ValueError(f"method='lobpcg' needs 5 k < n = {n}, got k = {k}; use 'lanczos'")
    if max_iters is None:
        max_iters = min(n, 200) if method == "lanczos" else 100
    if not isinstance(max_iters, int | np.integer) or max_iters < 1:
        raise ValueError(f"max_iters must be a positive integer, got {max_iters!r}")
    if method == "lanczos":
        max_iters = max(min(int(max_iters), n), k)
    if tol is None:
        tol = 1e-6 if method == "lanczos" else float(jnp.finfo(flat.dtype).eps)
    if not tol > 0:
        raise ValueError(f"tol must be > 0, got {tol!r}")
    key = jax.random.PRNGKey(0) if key is None else key
    block = _init_block(init, n, k, flat.dtype, key)
    static_unravel = _static_unravel(params, unravel)
    args = (loss_fn, flat, block, jnp.asarray(tol, flat.dtype), data)
    static = {"k": int(k), "max_iters": int(max_iters), "chunk_size": chunk_size}
    static["unravel"] = static_unravel
    if method == "lobpcg":
        values, vectors, iters = _lobpcg_solve(*args, **static)
        hvps, done = int(k + 4 * k * int(iters)), int(iters) < max_iters
    else:
        if loop == "auto":
            loop = "host" if jax.default_backend() == "cpu" else "device"
        solver = _lanczos_host if loop == "host" else _lanczos_device
        values, vectors, iters, done = solver(*args, **static)
        hvps = int(iters)
    return HessianEigs(
        values=np.asarray(values),
        vectors=vectors,
        num_hvps=hvps,
        iterations=int(iters),
        converged=bool(done),
        method=method,
        unravel=unravel,
    )


@functools.lru_cache(maxsize=64)
def _gd_pair_step(loss_fn: LossFn, unravel: Callable) -> Callable:
    """Jitted GD step on two stacked flat parameter vectors (the twins), cached per loss."""
    grad = jax.grad(lambda w: loss_fn(unravel(w)))

    @jax.jit
    def step(pair: jax.Array, lr: jax.Array, weight_decay: jax.Array) -> jax.Array:
        return pair - lr * (jax.vmap(grad)(pair) + weight_decay * pair)

    return step


@dataclass(frozen=True)
class StabilityTest:
    """Outcome of :func:`perturbation_growth` at one learning rate.

    ``growth`` is :math:`\\|\\Delta_T\\|/\\|\\Delta_0\\|` for the difference of the twins (inf if
    either diverged); ``alternating`` is True when the last two differences point in
    opposite directions, the signature of a factor :math:`1-\\eta\\lambda < -1`.
    ``history[n]`` is :math:`\\|\\Delta_n\\|/\\|\\Delta_0\\|` for every step run.
    """

    lr: float
    growth: float
    alternating: bool
    history: tuple[float, ...] = ()

    @property
    def stable(self) -> bool:
        return bool(np.isfinite(self.growth) and self.growth <= 1.0)


def perturbation_growth(
    loss_fn: LossFn,
    params: Params,
    lr: float,
    *,
    weight_decay: float = 0.0,
    steps: int = 60,
    rel_perturbation: float = 1e-4,
    direction: Any = None,
    key: jax.Array | None = None,
    _step: Callable | None = None,
) -> StabilityTest:
    r"""Run gradient descent from ``params`` and from ``params + delta`` in lockstep.

    Both copies take ``steps`` steps :math:`\theta \leftarrow \theta - \eta(\nabla L(\theta) +
    \alpha\theta)` of the *nonlinear* map. The difference evolves by the linearisation
    :math:`\Delta \leftarrow (I - \eta(H + \alpha I))\Delta` as long as it stays small, so it
    shrinks when every :math:`\eta(\lambda_i + \alpha)` lies in :math:`(0, 2)` and grows
    when one exceeds 2. ``delta`` points along ``direction`` (a flat vector or a pytree, e.g.
    the top Hessian eigenvector, so that the test probes the sharpest mode) or, by default,
    a Gaussian direction from ``key``; its norm is ``rel_perturbation * ||params||``.
    """
    if not (np.isfinite(lr) and lr > 0):
        raise ValueError(f"lr must be a finite number > 0, got {lr!r}")
    if not isinstance(steps, int | np.integer) or steps < 2:
        raise ValueError(f"steps must be an integer >= 2, got {steps!r}")
    flat, unravel = ravel_pytree(params)
    step = _gd_pair_step(loss_fn, _static_unravel(params, unravel)) if _step is None else _step
    key = jax.random.PRNGKey(0) if key is None else key
    if direction is None:
        noise = jax.random.normal(key, flat.shape, flat.dtype)
    elif isinstance(direction, jax.Array | np.ndarray) and np.ndim(direction) == 1:
        noise = jnp.asarray(direction, flat.dtype)
    else:
        noise = ravel_pytree(direction)[0].astype(flat.dtype)
    if noise.shape != flat.shape:
        raise ValueError(f"direction must have {flat.size} entries, got shape {noise.shape}")
    delta = noise * (rel_perturbation * jnp.linalg.norm(flat) / jnp.linalg.norm(noise))
    pair = jnp.stack([flat, flat + delta])
    start = float(jnp.linalg.norm(delta))
    lr_arr, wd_arr = jnp.asarray(lr, flat.dtype), jnp.asarray(weight_decay, flat.dtype)
    previous = current = pair[1] - pair[0]
    history = [1.0]
    for _ in range(steps):
        pair = step(pair, lr_arr, wd_arr)
        if not bool(jnp.all(jnp.isfinite(pair))):
            return StabilityTest(float(lr), float("inf"), False, tuple(history))
        previous, current = current, pair[1] - pair[0]
        history.append(float(jnp.linalg.norm(current)) / start)
    alternating = bool(jnp.vdot(current, previous) < 0)
    return StabilityTest(float(lr), history[-1], alternating, tuple(history))


@dataclass(frozen=True)
class StableLearningRate:
    """Result of :func:`largest_stable_lr`: the threshold lies in ``(lower, upper]``."""

    lower: float
    upper: float
    tests: tuple[StabilityTest, ...]

    @property
    def estimate(self) -> float:
        """Geometric midpoint of the final bracket."""
        return float(np.sqrt(self.lower * self.upper))


def largest_stable_lr(
    loss_fn: LossFn,
    params: Params,
    *,
    weight_decay: float = 0.0,
    bracket: tuple[float, float] = (1e-3, 1e2),
    bisections: int = 10,
    steps: int = 60,
    rel_perturbation: float = 1e-4,
    direction: Any = None,
    key: jax.Array | None = None,
) -> StableLearningRate:
    """Bisect (in log scale) for the largest learning rate at which :func:`perturbation_growth`
    finds the twins' difference not growing. Options are passed on to it.

    Raises:
        ValueError: if ``bracket[0]`` is not stable or ``bracket[1]`` is not unstable.
    """
    lo, hi = (float(b) for b in bracket)
    if not 0 < lo < hi:
        raise ValueError(f"bracket must satisfy 0 < lo < hi, got {bracket!r}")
    if not isinstance(bisections, int | np.integer) or bisections < 0:
        raise ValueError(f"bisections must be a non-negative integer, got {bisections!r}")
    _, unravel = ravel_pytree(params)
    step = _gd_pair_step(loss_fn, _static_unravel(params, unravel))
    options = {"weight_decay": weight_decay, "steps": steps, "key": key}
    options |= {"rel_perturbation": rel_perturbation, "direction": direction}

    def test(lr: float) -> StabilityTest:
        return perturbation_growth(loss_fn, params, lr, _step=step, **options)

    tests = [test(lo), test(hi)]
    if not tests[0].stable or tests[1].stable:
        raise ValueError(
            f"bracket {bracket} must have a stable lower and an unstable upper end; got "
            f"growth {tests[0].growth:.3g} at {lo:g} and {tests[1].growth:.3g} at {hi:g}"
        )
    for _ in range(bisections):
        mid = float(np.sqrt(lo * hi))
        tests.append(test(mid))
        lo, hi = (mid, hi) if tests[-1].stable else (lo, mid)
    return StableLearningRate(lo, hi, tuple(tests))


@dataclass(frozen=True)
class DepthStudyRow:
    """One network of chapter 5's table (all numbers for the regularised loss' GD)."""

    depth: int
    width: int
    num_params: int
    weight_decay: float
    sharpness_init: float
    sharpness_trained: float
    min_eig_trained: float
    grad_norm_trained: float
    train_loss: float
    predicted_lr: float
    measured_lr_lower: float
    measured_lr_upper: float
    hvps: int

    @property
    def measured_lr(self) -> float:
        return float(np.sqrt(self.measured_lr_lower * self.measured_lr_upper))


def depth_study_row(
    depth: int,
    width: int,
    images: jax.Array,
    labels: jax.Array,
    *,
    weight_decay: float = 1e-2,
    train_steps: int = 400,
    adam_lr: float = 3e-3,
    bisections: int = 12,
    steps: int = 20,
    seed: int = 0,
    return_params: bool = False,
) -> DepthStudyRow | tuple[DepthStudyRow, Callable, Params]:
    r"""Chapter 5's measurement for one ``SmallCNN(width, depth, "swish")`` on a fixed batch.

    1. sharpness :math:`\lambda_{\max}` of the cross-entropy at initialisation;
    2. ``train_steps`` full-batch Adam steps on :math:`L + \frac\alpha2\|\theta\|^2`, to get
       near a stationary point where the linearisation of GD is meaningful;
    3. :math:`\lambda_{\max}`, :math:`\lambda_{\min}` and the gradient norm there, and the
       predicted largest stable step :math:`2/(\lambda_{\max}+\alpha)`;
    4. the measured one: :func:`largest_stable_lr` with twins perturbed along the top
       eigenvector (``steps`` GD steps per test, ``bisections`` log-bisections in
       ``[1e-3, 1e2]``).

    With ``return_params=True`` it returns ``(row, apply, trained_params)``.
    """
    import optax
    from flax import nnx

    from restrained.models import SmallCNN, cross_entropy, functional

    apply, params = functional(
        SmallCNN(width=width, depth=depth, activation="swish", rngs=nnx.Rngs(seed))
    )

    def data_loss(p: Params) -> jax.Array:
        return cross_entropy(apply(p, images), labels)

    def total_loss(p: Params) -> jax.Array:
        flat = ravel_pytree(p)[0]
        return data_loss(p) + 0.5 * weight_decay * jnp.vdot(flat, flat)

    init = top_hessian_eigs(data_loss, params, k=1)
    optimiser = optax.adam(adam_lr)

    @jax.jit
    def train_step(p: Params, state: Any) -> tuple[Params, Any]:
        grads = jax.grad(total_loss)(p)
        updates, state = optimiser.update(grads, state, p)
        return optax.apply_updates(p, updates), state

    state = optimiser.init(params)
    for _ in range(train_steps):
        params, state = train_step(params, state)
    top = top_hessian_eigs(data_loss, params, k=1, init=init.vectors)
    bottom = top_hessian_eigs(lambda p: -data_loss(p), params, k=1)
    grad_norm = float(jnp.linalg.norm(ravel_pytree(jax.grad(total_loss)(params))[0]))
    found = largest_stable_lr(
        data_loss,
        params,
        weight_decay=weight_decay,
        bisections=bisections,
        steps=steps,
        direction=top.vectors[:, 0],
    )
    row = DepthStudyRow(
        depth=depth,
        width=width,
        num_params=int(ravel_pytree(params)[0].size),
        weight_decay=weight_decay,
        sharpness_init=float(init.values[0]),
        sharpness_trained=float(top.values[0]),
        min_eig_trained=float(-bottom.values[0]),
        grad_norm_trained=grad_norm,
        train_loss=float(data_loss(params)),
        predicted_lr=float(2.0 / (top.values[0] + weight_decay)),
        measured_lr_lower=found.lower,
        measured_lr_upper=found.upper,
        hvps=init.num_hvps + top.num_hvps + bottom.num_hvps,
    )
    return (row, apply, params) if return_params else row
