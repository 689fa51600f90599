import numpy as np
import pytest

from restrained import pde


def dense_laplacian(n, dx):
    m = n - 2
    return (
        np.diag(-2 * np.ones(m)) + np.diag(np.ones(m - 1), 1) + np.diag(np.ones(m - 1), -1)
    ) / dx**2


def test_tent_is_the_authors_initial_condition():
    u0 = pde.tent()
    assert u0.dtype == np.float32 and u0.shape == (31,)
    assert u0[0] == 0 and u0[-1] == 0 and u0[15] == np.float32(1.5)
    assert u0[14] == np.float32(1.4) and u0[16] == np.float32(1.4)


@pytest.mark.parametrize("dx", [1.0, 0.1])
def test_laplacian_eigenvalues_match_dense_matrix(dx):
    mu = pde.laplacian_eigenvalues(17, dx)
    np.testing.assert_allclose(
        mu, np.sort(np.linalg.eigvalsh(-dense_laplacian(17, dx))), rtol=1e-10
    )


@pytest.mark.parametrize("alpha", [0.0, 0.7])
def test_explicit_step_multiplies_a_sine_mode_by_xi(alpha):
    n, dx, dt, k = 21, 0.5, 0.05, 7
    j = np.arange(n)
    mode = np.sin(k * np.pi * j / (n - 1)).astype(np.float32)
    new = np.asarray(pde.explicit_step(mode, dt, dx, alpha))
    xi = pde.amplification_factor(pde.mode_frequencies(n, dx)[k - 1], dt, dx, alpha)
    np.testing.assert_allclose(new[1:-1], xi * mode[1:-1], rtol=0, atol=1e-6)


def test_von_neumann_bound_and_its_grid_version():
    assert pde.critical_dt(1.0) == 0.5
    assert pde.critical_dt(0.1) == pytest.approx(0.005)
    assert pde.critical_dt(1.0, alpha=1.0) == pytest.approx(2 / 5)
    grid = pde.critical_dt(1.0, n_points=31)
    assert grid == pytest.approx(1 / (2 * np.cos(np.pi / 60) ** 2))
    assert 0.5 < grid < 0.505
    assert pde.max_amplification(0.5, 1.0) == pytest.approx(1.0)
    assert pde.max_amplification(0.8, 1.0) == pytest.approx(2.2)
    assert pde.max_amplification(80.0, 1.0, scheme="implicit") == pytest.approx(1.0)
    assert pde.max_amplification(80.0, 1.0, scheme="implicit", n_points=31) < 1


def test_measured_growth_rates_match_the_grid_amplification():
    dts = [0.1, 0.3, 0.45, 0.55, 0.8]
    measured = pde.growth_rates(dts, steps=2000, tail=300)
    predicted = [pde.max_amplification(d, 1.0, n_points=31) for d in dts]
    np.testing.assert_allclose(measured, predicted, rtol=1e-4)
    implicit = pde.growth_rates([0.8, 8.0], scheme="implicit", steps=500, tail=100)
    assert np.all(implicit < 1)


def test_growth_rates_with_decay_shift_the_threshold():
    alpha = 1.0
    dt_c = pde.critical_dt(1.0, alpha, n_points=31)
    below, above = pde.growth_rates([0.99 * dt_c, 1.01 * dt_c], alpha)
    assert below < 1 < above


def test_solve_stable_obeys_maximum_principle_and_unstable_diverges():
    u0 = pde.tent()
    stable = pde.solve(u0, 0.4, 500)
    assert stable.diverged_at is None and stable.u.shape == (501, 31)
    assert np.abs(stable.u).max() <= 1.5
    assert stable.at_time(0.8) is not None and np.array_equal(stable.at_time(0.8), stable.u[2])
    unstable = pde.solve(u0, 0.8, 400)
    assert unstable.diverged_at is not None and unstable.diverged_at < 400
    assert np.all(np.isfinite(unstable.u)) and len(unstable.u) == unstable.diverged_at


def test_implicit_solve_matches_dense_backward_euler():
    u0 = pde.tent(11).astype(np.float64)
    sol = pde.solve(np.asarray(u0, np.float32), 2.0, 3, scheme="implicit")
    a = pde.implicit_matrix(11, 2.0, 1.0)
    ref = u0
    for _ in range(3):
        ref = np.linalg.solve(a, ref)
    np.testing.assert_allclose(sol.u[-1], ref, rtol=1e-5, atol=1e-6)


def test_one_ulp_perturbation_dies_when_stable_and_grows_when_unstable():
    u0 = pde.tent()
    diff, _, _ = pde.perturbation_growth(u0, 0.4, 200)
    assert diff[0] == np.spacing(np.float32(1.5)) and diff[-1] == 0
    diff, base, _ = pde.perturbation_growth(u0, 0.8, 60)
    assert diff[-1] > 1e6 * diff[0] and base.diverged_at is None


@pytest.mark.parametrize(
    ("call", "name"),
    [
        (lambda: pde.solve(pde.tent(), 0.0, 10), "dt"),
        (lambda: pde.solve(pde.tent(), -0.1, 10), "dt"),
        (lambda: pde.solve(pde.tent(), 0.1, 10, dx=0.0), "dx"),
        (lambda: pde.solve(pde.tent(), 0.1, 10, alpha=float("nan")), "alpha"),
        (lambda: pde.solve(pde.tent(), 0.1, 0), "steps"),
        (lambda: pde.solve(pde.tent(), 0.1, 10, scheme="rk4"), "scheme"),
        (lambda: pde.solve(np.array([0.0, np.nan, 0.0]), 0.1, 10), "u0"),
        (lambda: pde.solve(np.zeros(2), 0.1, 10), "u0"),
        (lambda: pde.tent(2), "n_points"),
        (lambda: pde.laplacian_eigenvalues(31, float("inf")), "dx"),
        (lambda: pde.growth_rates([0.1, float("nan")]), "dt"),
        (lambda: pde.growth_rates([0.1], n_points=2), "n_points"),
        (lambda: pde.growth_rates([0.1], steps=10, tail=20), "tail"),
        (lambda: pde.amplification_factor([np.inf], 0.1, 1.0), "omega"),
        (lambda: pde.critical_dt(1.0, alpha=-5.0), "alpha"),
        (lambda: pde.perturbation_growth(pde.tent(), 0.4, 10, index=0), "index"),
    ],
)
def test_bad_arguments_raise_value_errors_that_name_them(call, name):
    with pytest.raises(ValueError, match=name):
        call()
