import jax.numpy as jnp
import numpy as np
import optax
import pytest
from scipy.linalg import expm

from restrained import linear_stability as ls
from restrained.optim import perturbed_sgd

DIAG = ls.Quadratic(np.diag([4.0, 1.0, 0.25]), np.array([1.0, -1.0, 0.5]))
THETA0 = np.array([1.0, 2.0, -1.0], np.float32)


def test_thresholds_closed_forms():
    assert ls.threshold(4.0) == 0.5
    assert ls.threshold(4.0, alpha=1.0) == pytest.approx(0.4)
    assert ls.threshold(4.0, momentum=0.9) == pytest.approx(3.8 / 4)
    assert ls.threshold(4.0, momentum=0.9, nesterov=True) == pytest.approx(3.8 / 2.8 / 4)
    assert ls.threshold(-1.0, alpha=2.0) == pytest.approx(2.0)


@pytest.mark.parametrize(
    ("mu", "nesterov"), [(0.0, False), (0.5, False), (0.9, False), (0.9, True)]
)
def test_mode_radius_crosses_one_at_the_stability_limit(mu, nesterov):
    x_star = ls.stability_limit(mu, nesterov)
    below, at, above = ls.mode_radius([x_star * 0.999, x_star, x_star * 1.001], mu, nesterov)
    assert below < 1 < above and at == pytest.approx(1.0, abs=1e-9)
    assert ls.mode_radius(-0.01, mu, nesterov) > 1  # negative curvature grows for every step


@pytest.mark.parametrize(("mu", "nesterov"), [(0.0, False), (0.7, False), (0.7, True)])
def test_mode_radius_matches_the_iteration_matrix(mu, nesterov):
    for x in [0.1, 0.9, 1.5, 2.5]:
        if nesterov:
            m = np.array([[1 - x * (1 + mu), -mu * mu], [x, mu]])
        else:
            m = np.array([[1 - x, -mu], [x, mu]])
        expected = np.max(np.abs(np.linalg.eigvals(m))) if mu else abs(1 - x)
        assert ls.mode_radius(x, mu, nesterov) == pytest.approx(expected, rel=1e-9)


def test_run_is_plain_gradient_descent():
    lr, alpha = 0.3, 0.1
    result = ls.run(DIAG, THETA0, lr, 20, alpha=alpha)
    theta = THETA0.astype(np.float64)
    h, b = DIAG.hessian, DIAG.b
    for _ in range(20):
        theta = theta - lr * (h @ theta - b + alpha * theta)
    np.testing.assert_allclose(result.theta[-1], theta, rtol=1e-5, atol=1e-6)
    expected_loss = 0.5 * theta @ h @ theta - b @ theta + 0.5 * alpha * theta @ theta
    assert result.loss[-1] == pytest.approx(expected_loss, rel=1e-5)
    assert result.theta.shape == (21, 3) and result.diverged_at is None


@pytest.mark.parametrize("nesterov", [False, True])
def test_run_with_momentum_is_the_books_optimizer(nesterov):
    tx = perturbed_sgd(0.2, momentum=0.8, nesterov=nesterov, weight_decay=0.05)
    theta = jnp.asarray(THETA0)
    state = tx.init(theta)
    h, b = jnp.asarray(DIAG.hessian, jnp.float32), jnp.asarray(DIAG.b, jnp.float32)
    for _ in range(30):
        updates, state = tx.update(h @ theta - b, state, theta)
        theta = optax.apply_updates(theta, updates)
    result = ls.run(DIAG, THETA0, 0.2, 30, alpha=0.05, momentum=0.8, nesterov=nesterov)
    np.testing.assert_allclose(result.theta[-1], np.asarray(theta), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("lr", [0.3, 0.45, 0.55, 1.0])
def test_lean_stability_test_agrees_with_full_runs(lr):
    full = ls.is_stable_run(ls.run(DIAG, THETA0, lr, 400, alpha=0.1, momentum=0.5))
    assert ls.is_stable(DIAG, THETA0, lr, 400, alpha=0.1, momentum=0.5) == full


def test_unstable_run_is_cut_at_divergence():
    result = ls.run(DIAG, THETA0, 1.0, 500)
    assert result.diverged_at is not None and len(result.loss) == result.diverged_at
    assert np.all(np.isfinite(result.loss)) and not ls.is_stable_run(result)
    assert ls.is_stable_run(ls.run(DIAG, THETA0, 0.45, 500))


@pytest.mark.parametrize(("mu", "nesterov"), [(0.0, False), (0.9, False), (0.9, True)])
def test_measured_largest_stable_lr_matches_prediction(mu, nesterov):
    alpha = 0.5
    measured = ls.largest_stable_lr(DIAG, THETA0, alpha, mu, nesterov, lo=1e-3, hi=5.0, steps=3000)
    assert measured == pytest.approx(ls.threshold(4.0, alpha, mu, nesterov), rel=1e-3)


def test_bisection_brackets_are_measured():
    assert ls.bisect_largest_stable(lambda s: s <= 0.3, 0.01, 1.0, rtol=1e-6) == pytest.approx(
        0.3, rel=1e-6
    )
    with pytest.raises(ValueError, match="lo"):
        ls.bisect_largest_stable(lambda s: s <= 0.3, 0.5, 1.0)
    with pytest.raises(ValueError, match="hi"):
        ls.bisect_largest_stable(lambda s: s <= 0.3, 0.01, 0.2)


def rk4(problem, theta0, t, alpha, n):
    a = problem.hessian + alpha * np.eye(len(problem.hessian))

    def f(th):
        return -(a @ th - problem.b)

    th, h = theta0.astype(np.float64), t / n
    for _ in range(n):
        k1 = f(th)
        k2 = f(th + h / 2 * k1)
        k3 = f(th + h / 2 * k2)
        k4 = f(th + h * k3)
        th = th + h / 6 * (k1 + 2 * k2 + 2 * k3 + k4)
    return th


def test_gradient_flow_matches_rk4_and_expm_even_when_singular():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(5, 4))
    x[:, 3] = 0.0  # a flat direction: H is singular
    q = ls.Quadratic.least_squares(x, rng.normal(size=(5, 2)))
    theta0 = rng.normal(size=(4, 2))
    flow = ls.gradient_flow(q, theta0, [0.0, 0.7, 3.0], alpha=0.0)
    assert flow.shape == (3, 4, 2)
    np.testing.assert_allclose(flow[0], theta0)
    np.testing.assert_allclose(flow[2], rk4(q, theta0, 3.0, 0.0, 3000), rtol=1e-9, atol=1e-10)
    # with weight decay, theta(t) = theta* + expm(-A t)(theta0 - theta*)
    alpha = 0.3
    a = q.hessian + alpha * np.eye(4)
    star = np.linalg.solve(a, q.b)
    expected = star + expm(-a * 0.7) @ (theta0 - star)
    np.testing.assert_allclose(ls.gradient_flow(q, theta0, 0.7, alpha)[0], expected, rtol=1e-10)


def test_least_squares_quadratic_reproduces_the_loss():
    rng = np.random.default_rng(1)
    x, y = rng.normal(size=(7, 3)), rng.normal(size=(7, 2))
    q = ls.Quadratic.least_squares(x, y)
    theta = rng.normal(size=(3, 2)).astype(np.float32)
    expected = np.sum((x @ theta - y) ** 2) / (2 * 7)
    assert float(q.loss(jnp.asarray(theta))) == pytest.approx(expected, rel=1e-5)
    np.testing.assert_allclose(q.eigenvalues, np.linalg.eigvalsh(x.T @ x / 7))


@pytest.mark.parametrize(
    ("call", "name"),
    [
        (lambda: ls.run(DIAG, THETA0, 0.0, 10), "lr"),
        (lambda: ls.run(DIAG, THETA0, float("nan"), 10), "lr"),
        (lambda: ls.run(DIAG, THETA0, 0.1, 0), "steps"),
        (lambda: ls.run(DIAG, THETA0, 0.1, 10, alpha=-1.0), "alpha"),
        (lambda: ls.run(DIAG, THETA0, 0.1, 10, momentum=1.0), "momentum"),
        (lambda: ls.run(DIAG, THETA0, 0.1, 10, nesterov=True), "nesterov"),
        (lambda: ls.is_stable(DIAG, THETA0, -0.1, 10), "lr"),
        (lambda: ls.is_stable(DIAG, THETA0[:1], 0.1, 10), "theta0"),
        (lambda: ls.run(DIAG, THETA0[:2], 0.1, 10), "theta0"),
        (lambda: ls.run(DIAG, np.array([np.nan, 0, 0]), 0.1, 10), "theta0"),
        (lambda: ls.Quadratic(np.array([[1.0, 2.0], [0.0, 1.0]]), np.zeros(2)), "symmetric"),
        (lambda: ls.Quadratic(np.eye(2), np.zeros(3)), "b"),
        (lambda: ls.Quadratic.least_squares(np.array([[np.inf]]), np.zeros(1)), "finite"),
        (lambda: ls.threshold(1.0, alpha=-2.0), "lam_max"),
        (lambda: ls.mode_radius([np.nan]), "x"),
        (lambda: ls.bisect_largest_stable(lambda s: True, 0.0, 1.0), "lo"),
        (lambda: ls.bisect_largest_stable(lambda s: True, 0.5, 0.1), "lo"),
        (lambda: ls.gradient_flow(DIAG, THETA0, [-1.0]), "times"),
    ],
)
def test_bad_arguments_raise_value_errors_that_name_them(call, name):
    with pytest.raises(ValueError, match=name):
        call()


@pytest.mark.parametrize("check", [ls.run, ls.is_stable])
def test_run_and_is_stable_share_their_argument_checks(check):
    problem = ls.Quadratic(np.diag([1.0, 2.0]), np.zeros(2))
    with pytest.raises(ValueError, match="theta0"):
        check(problem, np.array([np.nan, 0.0]), 0.1, 10)
    with pytest.raises(ValueError, match="theta0"):
        check(problem, np.zeros(3), 0.1, 10)
    with pytest.raises(ValueError, match="alpha"):
        check(problem, np.zeros(2), 0.1, 10, alpha=-1.0)
    with pytest.raises(ValueError, match="lr"):
        check(problem, np.zeros(2), 0.0, 10)
