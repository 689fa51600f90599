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
from typing import Any

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

        total, _ = jax.lax.scan(body, jnp.zeros_like(v), chunks)
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


def _lanczos(
    matvec: Callable[[jax.Array], jax.Array],
    start: jax.Array,
    k: int,
    max_steps: int,
    tol: jax.Array,
) -> tuple[jax.Array, jax.Array, jax.Array, jax.Array]:
    """Lanczos with full reorthogonalisation; returns (values, vectors, steps, converged)."""
    n, dtype = start.shape[0], start.dtype
    basis = jnp.zeros((max_steps + 1, n), dtype).at[0].set(start / jnp.linalg.norm(start))
    alphas = jnp.zeros(max_steps, dtype)
    betas = jnp.zeros(max_steps, dtype)
    index = jnp.arange(max_steps)

    def ritz(alphas: jax.Array, betas: jax.Array, j: jax.Array) -> tuple[jax.Array, jax.Array]:
        """Eigen-decomposition of the leading (j+1)x(j+1) block of T, padded to full size."""
        active = index <= j
        off = jnp.where(index < j, betas, 0.0)
        radius = jnp.abs(off) + jnp.abs(jnp.roll(off, 1).at[0].set(0.0))
        floor = jnp.min(jnp.where(active, alphas - radius, jnp.inf)) - 1.0
        diag = jnp.where(active, alphas, floor - index.astype(dtype))
        tri = jnp.diag(diag) + jnp.diag(off[:-1], 1) + jnp.diag(off[:-1], -1)
        return jnp.linalg.eigh(tri)

    def body(state: tuple) -> tuple:
        j, basis, alphas, betas, _ = state
        v = basis[j]
        w = matvec(v)
        a = jnp.vdot(v, w)
        for _ in range(2):  # classical Gram-Schmidt twice against all previous vectors
            w = w - basis.T @ (basis @ w)
        b = jnp.linalg.norm(w)
        breakdown = b <= 10 * jnp.finfo(dtype).eps * jnp.abs(a)
        basis = basis.at[j + 1].set(jnp.where(breakdown, 0.0, w / jnp.where(b > 0, b, 1.0)))
        alphas, betas = alphas.at[j].set(a), betas.at[j].set(b)
        theta, vecs = ritz(alphas, betas, j)
        top = theta[-k:]
        residual = jnp.abs(b * vecs[j, -k:])
        done = breakdown | ((j + 1 >= k) & jnp.all(residual <= tol * jnp.abs(top)))
        return j + 1, basis, alphas, betas, done

    def cond(state: tuple) -> jax.Array:
        j, *_, done = state
        return (j < max_steps) & ~done

    state = (jnp.asarray(0), basis, alphas, betas, jnp.asarray(False))
    steps, basis, alphas, betas, done = jax.lax.while_loop(cond, body, state)
    theta, vecs = ritz(alphas, betas, steps - 1)
    values = theta[::-1][:k]
    vectors = basis[:max_steps].T @ vecs[:, ::-1][:, :k]
    vectors = vectors / jnp.linalg.norm(vectors, axis=0)
    return values, vectors, steps, done


@functools.partial(
    jax.jit, static_argnames=("loss_fn", "k", "method", "max_iters", "chunk_size", "unravel")
)
def _solve(
    loss_fn: LossFn,
    flat: jax.Array,
    block: jax.Array,
    tol: jax.Array,
    data: Any,
    *,
    k: int,
    method: str,
    max_iters: int,
    chunk_size: int | None,
    unravel: Callable,
) -> tuple[jax.Array, jax.Array, jax.Array, jax.Array, jax.Array]:
    product = _flat_hvp(loss_fn, unravel, data, chunk_size)

    def matvec(v: jax.Array) -> jax.Array:
        return product(flat, v)

    if method == "lanczos":
        start = jnp.sum(block, axis=1)
        values, vectors, steps, done = _lanczos(matvec, start, k, max_iters, tol)
        return values, vectors, steps, steps, done
    blocked = jax.vmap(matvec, in_axes=1, out_axes=1)
    values, vectors, iters = lobpcg_standard(blocked, block, m=max_iters, tol=tol)
    order = jnp.argsort(-values)
    return values[order], vectors[:, order], iters, k + 4 * k * iters, iters < max_iters


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
    shapes = tuple((x.shape, str(x.dtype)) for x in jax.tree.leaves(params))
    static_unravel = _UnravelKey(unravel, jax.tree.structure(params), shapes)
    values, vectors, iters, hvps, done = _solve(
        loss_fn,
        flat,
        block,
        jnp.asarray(tol, flat.dtype),
        data,
        k=int(k),
        method=method,
        max_iters=int(max_iters),
        chunk_size=chunk_size,
        unravel=static_unravel,
    )
    return HessianEigs(
        values=np.asarray(values),
        vectors=vectors,
        num_hvps=int(hvps),
        iterations=int(iters),
        converged=bool(done),
        method=method,
        unravel=unravel,
    )
