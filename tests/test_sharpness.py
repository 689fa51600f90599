import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from restrained import data, models
from restrained import sharpness as sh


@pytest.fixture(scope="module")
def small_cnn():
    """A SmallCNN with fewer than 2,000 parameters on 64 digits."""
    split = data.load_digits()
    x, y = jnp.asarray(split.x_train[:64]), jnp.asarray(split.y_train[:64])
    apply, params = models.functional(models.SmallCNN(width=3, depth=2, rngs=nnx.Rngs(0)))

    def loss(p):
        return models.cross_entropy(apply(p, x), y)

    def batch_loss(p, batch):
        return models.cross_entropy(apply(p, batch[0]), batch[1])

    hessian = np.asarray(sh.dense_hessian(loss, params), np.float64)
    return loss, batch_loss, params, (x, y), np.linalg.eigvalsh(hessian)[::-1], hessian


@pytest.mark.parametrize("method", ["lanczos", "lobpcg"])
def test_matches_dense_eigh(small_cnn, method):
    loss, _, params, _, exact, _ = small_cnn
    n = jax.flatten_util.ravel_pytree(params)[0].size
    assert n < 2000
    got = sh.top_hessian_eigs(loss, params, k=3, method=method)
    np.testing.assert_allclose(got.values, exact[:3], rtol=1e-4)
    assert got.converged and got.num_hvps > 0
    assert got.vectors.shape == (n, 3)
    # unit eigenvectors: Rayleigh quotients reproduce the values
    h = small_cnn[5]
    v = np.asarray(got.vectors, np.float64)
    np.testing.assert_allclose(np.einsum("ni,nm,mi->i", v, h, v), exact[:3], rtol=1e-3)


def test_warm_start_needs_fewer_hvps(small_cnn):
    loss, _, params, _, exact, _ = small_cnn
    cold = sh.top_hessian_eigs(loss, params, k=2)
    warm = sh.top_hessian_eigs(loss, params, k=2, init=cold.vectors)
    warm_trees = sh.top_hessian_eigs(loss, params, k=2, init=cold.vectors_as_pytrees())
    assert warm.num_hvps < cold.num_hvps
    assert warm_trees.num_hvps == warm.num_hvps
    np.testing.assert_allclose(warm.values, exact[:2], rtol=1e-4)


def test_chunked_hvp_equals_full_batch(small_cnn):
    loss, batch_loss, params, batch, _, hessian = small_cnn
    flat, unravel = jax.flatten_util.ravel_pytree(params)
    v = jax.random.normal(jax.random.PRNGKey(1), flat.shape)
    full = jax.flatten_util.ravel_pytree(sh.hvp(loss, params)(unravel(v)))[0]
    chunked = sh.hvp(batch_loss, params, data=batch, chunk_size=16)(unravel(v))
    np.testing.assert_allclose(
        jax.flatten_util.ravel_pytree(chunked)[0], full, rtol=2e-4, atol=1e-6
    )
    np.testing.assert_allclose(full, hessian @ np.asarray(v, np.float64), rtol=1e-3, atol=1e-5)


def test_largest_algebraic_not_largest_magnitude():
    diag = jnp.array([-10.0, 3.0, 2.5, 1.0, 0.5, 0.2, 0.1, 0.0, -1.0, -2.0, -3.0, 0.3])

    def loss(w):
        return 0.5 * jnp.sum(diag * w["a"] ** 2)

    params = {"a": jnp.ones(12)}
    for method, loop in [("lanczos", "host"), ("lanczos", "device"), ("lobpcg", "auto")]:
        got = sh.top_hessian_eigs(loss, params, k=2, method=method, loop=loop)
        np.testing.assert_allclose(got.values, [3.0, 2.5], rtol=1e-5)
        vec = np.asarray(got.vectors)
        assert np.abs(vec[1, 0]) == pytest.approx(1.0, abs=1e-3)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"k": 0}, "k must"),
        ({"k": 12}, "k must"),
        ({"k": 3, "method": "lobpcg"}, "5 k < n"),
        ({"method": "power"}, "method"),
        ({"tol": 0.0}, "tol"),
        ({"loop": "gpu"}, "loop"),
    ],
)
def test_bad_arguments(kwargs, match):
    params = {"a": jnp.ones(12)}
    with pytest.raises(ValueError, match=match):
        sh.top_hessian_eigs(lambda w: jnp.sum(w["a"] ** 2), params, **kwargs)


def test_non_scalar_loss_and_bad_chunks():
    params = {"a": jnp.ones(12)}
    with pytest.raises(ValueError, match="scalar"):
        sh.top_hessian_eigs(lambda w: w["a"] ** 2, params)
    with pytest.raises(ValueError, match="chunk_size"):
        sh.hvp(lambda w, x: jnp.sum(w["a"] * x), params, data=jnp.ones((10, 12)), chunk_size=3)
