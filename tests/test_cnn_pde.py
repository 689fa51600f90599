import jax
import jax.numpy as jnp
import numpy as np
import pytest

from restrained import cnn_pde as cp


@pytest.fixture(scope="module")
def x64():
    jax.config.update("jax_enable_x64", True)
    yield
    jax.config.update("jax_enable_x64", False)


@pytest.fixture(scope="module")
def checkerboard_gram():
    image = cp.checkerboard(256)
    return image, cp.patch_gram(image, 32)


def _random_problem(seed=0, shape=(11, 9), k=3):
    rng = np.random.default_rng(seed)
    return rng.standard_normal(shape), 0.4 * rng.standard_normal((k, k))


def test_checkerboard_is_the_authors():
    board = cp.checkerboard(4)
    assert board[0, 0] == -1 and board[0, 1] == 1 and board[1, 1] == -1
    assert board.sum() == 0
    with pytest.raises(ValueError, match="size"):
        cp.checkerboard(0)


@pytest.mark.parametrize("pooling", ["mean", "sum"])
@pytest.mark.parametrize("label", [0.0, 1.0])
def test_hand_gradient_matches_autodiff(x64, pooling, label):
    image, kernel = _random_problem()
    args = (image, label, 1.7, 0.3, pooling)
    hand = cp.loss_gradient(jnp.asarray(kernel), *args)
    auto = jax.grad(cp.loss)(jnp.asarray(kernel), *args)
    np.testing.assert_allclose(np.asarray(hand), np.asarray(auto), rtol=1e-10, atol=1e-12)


def test_forward_matches_direct_sum(x64):
    image, kernel = _random_problem(1)
    k = kernel.shape[0]
    u = np.array(
        [
            [np.sum(kernel * image[i : i + k, j : j + k]) for j in range(image.shape[1] - k + 1)]
            for i in range(image.shape[0] - k + 1)
        ]
    )
    swish = u / (1 + np.exp(-2.0 * u))
    assert float(cp.forward(kernel, image, beta=2.0)) == pytest.approx(swish.mean(), rel=1e-12)
    assert float(cp.forward(kernel, image, beta=2.0, pooling="sum")) == pytest.approx(
        swish.sum(), rel=1e-12
    )


def test_patch_gram_is_the_correlation_of_the_correlation(x64):
    image, kernel = _random_problem(2, (13, 10), 4)
    gram = cp.patch_gram(image, 4)
    explicit = np.zeros((16, 16))
    for i in range(10):
        for j in range(7):
            p = image[i : i + 4, j : j + 4].reshape(-1)
            explicit += np.outer(p, p)
    np.testing.assert_allclose(gram, explicit, rtol=1e-12)
    u = cp.correlate_valid(image, kernel)
    np.testing.assert_allclose(
        gram @ kernel.reshape(-1), np.asarray(cp.correlate_valid(image, u)).reshape(-1), rtol=1e-10
    )


def test_transitioning_operator_is_the_hessian_at_zero_minus_the_sigmoid_term(x64):
    image, _ = _random_problem(3, (9, 9), 3)
    alpha, beta = 0.7, 1.3
    hess = jax.hessian(cp.loss)(jnp.zeros((3, 3)), image, 1.0, beta, alpha, "mean")
    hess = np.asarray(hess).reshape(9, 9)
    pde = cp.transitioning_operator(image, 3, alpha, beta=beta, a=-0.5, pooling="mean")
    s = cp.patch_sum(image, 3).reshape(-1) / cp.n_positions(image, 3)
    # sigma'(0) (phi'(0) S/N)^2 = (1/4)(1/2)^2 S S^T / N^2 is what freezing sigma(z) drops
    np.testing.assert_allclose(hess, pde.matrix + np.outer(s, s) / 16, rtol=1e-9, atol=1e-12)


def test_activated_operator_has_one_nontrivial_eigenvalue():
    image, _ = _random_problem(4, (10, 10), 3)
    image = np.abs(image)
    pde = cp.activated_operator(image, 3, 2.0, pooling="mean")
    s = cp.patch_sum(image, 3) / cp.n_positions(image, 3)
    eig = pde.eigenvalues()
    np.testing.assert_allclose(eig[:-1], 2.0, rtol=1e-12)
    assert eig[-1] == pytest.approx(2.0 + np.sum(s**2) / 4, rel=1e-12)
    assert cp.not_activated_operator(3, 2.0).is_stable(1.0)
    assert not cp.not_activated_operator(3, 2.0).is_stable(1.01)


def test_figure3_window(checkerboard_gram):
    image, gram = checkerboard_gram
    alpha_min, alpha_max = cp.stability_window(image, 32, 1e-8, gram=gram)
    assert alpha_min == pytest.approx(1.296e7, rel=1e-6)
    assert alpha_max == pytest.approx(2.0e8, rel=1e-6)
    lower, upper = cp.spectral_bounds(image, 32, gram=gram)
    assert lower == pytest.approx(225**2 * 1024, rel=1e-9)  # the plane wave (pi, pi) is exact
    assert upper == pytest.approx(256.0**4, rel=1e-9)  # linear.py's "alpha_min" is upper / 4


def test_figure3_iteration_rates(checkerboard_gram):
    image, gram = checkerboard_gram
    pde = cp.transitioning_operator(image, 32, 0.0, gram=gram)
    alphas = np.array([1.1e7, 1.3e7, 1.9e8, 2.1e8])
    kernel0 = np.random.default_rng(7).standard_normal((32, 32))
    run = cp.iterate_linearised(pde, kernel0, 1e-8, 300, weight_decay=alphas)
    predicted = [pde.with_weight_decay(a).spectral_radius(1e-8) for a in alphas]
    np.testing.assert_allclose(run.growth_rate(100), predicted, rtol=1e-4)
    assert [pde.with_weight_decay(a).is_stable(1e-8) for a in alphas] == [0, 1, 1, 0]


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_window_matches_eigenvalue_condition_and_spectral_sandwich(seed):
    image, _ = _random_problem(seed, (12, 12), 3)
    lr = 0.01
    lo, hi = cp.stability_window(image, 3, lr, pooling="mean")
    pde = cp.transitioning_operator(image, 3, 0.0, pooling="mean")
    for alpha, inside in [(lo * 0.99, False), (lo * 1.01, True), (hi * 0.99, True), (hi * 1.01, 0)]:
        assert pde.with_weight_decay(alpha).is_stable(lr) == inside
    mu_max = np.linalg.eigvalsh(cp.patch_gram(image, 3))[-1]
    lower, upper = cp.spectral_bounds(image, 3)
    assert lower <= mu_max * (1 + 1e-12) and mu_max <= upper * (1 + 1e-12)
    assert lo == pytest.approx(0.25 * mu_max / cp.n_positions(image, 3), rel=1e-12)


def test_diverging_iteration_reports_inf_without_warnings():
    pde = cp.not_activated_operator(2, 10.0)
    run = cp.iterate_linearised(pde, np.ones((2, 2)), np.array([0.1, 1.0]), 400)
    assert np.isfinite(run.norms[:, 0]).all()
    assert np.isinf(run.norms[-1, 1]) and np.isfinite(run.norms[50, 1])


@pytest.mark.parametrize(
    ("call", "match"),
    [
        (lambda: cp.stability_window(np.ones((4, 4)), 5, 0.1), "kernel_size"),
        (lambda: cp.stability_window(np.ones((4, 4)), 2, 0.0), "lr"),
        (lambda: cp.stability_window(np.ones((4, 4)), 2, 0.1, pooling="max"), "pooling"),
        (lambda: cp.loss(np.ones((2, 2)), np.ones((4, 4)), label=2.0), "label"),
        (lambda: cp.forward(np.ones((2, 3)), np.ones((4, 4))), "kernel"),
        (lambda: cp.patch_gram(np.ones(4), 2), "image"),
        (
            lambda: cp.iterate_linearised(cp.not_activated_operator(2, 1.0), np.ones(4), 0.1, 5),
            "kernel0",
        ),
        (
            lambda: cp.iterate_linearised(
                cp.not_activated_operator(2, 1.0), np.ones((2, 2)), -1.0, 5
            ),
            "lr",
        ),
    ],
)
def test_bad_input_raises_value_error(call, match):
    with pytest.raises(ValueError, match=match):
        call()
