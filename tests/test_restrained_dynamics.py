import jax.numpy as jnp
import numpy as np
import pytest

from restrained import restrained_dynamics as rd


@pytest.fixture(scope="module")
def fig4():
    return rd.CheckerboardMap()


def brute_force_p_step(m, kernel, lr):
    """One GD step of the full 2-D model, written with explicit sliding windows (NumPy)."""
    n_i, s = m.image_size, m.kernel_size
    i, j = np.indices((n_i, n_i))
    image = np.where((i + j) % 2 == 0, -1.0, 1.0)
    windows = np.lib.stride_tricks.sliding_window_view(image, (s, s))
    u = np.einsum("abij,ij->ab", windows, kernel)
    z = np.mean(rd.swish(u, m.beta))
    sig = 1.0 / (1.0 + np.exp(-z))
    grad = (sig - m.label) * np.einsum("ab,abij->ij", rd.swish_prime(u, m.beta), windows)
    grad = grad / u.size + m.alpha * kernel
    return kernel - lr * grad


def test_fractions_and_patch(fig4):
    assert fig4.positions == 225**2
    assert fig4.f_plus == 25313 / 50625
    assert fig4.c_norm2 == 1024.0
    assert fig4.patch()[0, 0] == -1.0 and fig4.patch()[0, 1] == 1.0


def test_scalar_map_is_exact_for_a_small_checkerboard():
    m = rd.CheckerboardMap(alpha=3.0, image_size=12, kernel_size=4)
    rng = np.random.default_rng(0)
    kernel = rng.standard_normal((4, 4))
    new = brute_force_p_step(m, kernel, 0.07)
    p0 = m.projection(kernel)
    np.testing.assert_allclose(m.projection(new), m.step(p0, 0.07), rtol=1e-12)
    perp0 = kernel - m.kernel_from(p0)
    perp1 = new - m.kernel_from(m.projection(new))
    np.testing.assert_allclose(perp1, (1 - 0.07 * 3.0) * perp0, atol=1e-12)


def test_curvature_matches_finite_differences(fig4):
    for p in (-7.0, -0.3, 0.0, 2.0, 3.865, 12.0):
        h = 1e-5
        fd = (fig4.g(p + h) - fig4.g(p - h)) / (2 * h)
        np.testing.assert_allclose(fig4.curvature(p), fd, rtol=1e-6, atol=1e-6)


def test_minimiser_and_its_stability_limit(fig4):
    p_star = fig4.minimiser()
    assert abs(fig4.g(p_star)) < 1e-9
    assert fig4.curvature(p_star) > 0
    assert 0.0322 < 2 / fig4.curvature(p_star) < 0.0323
    assert fig4.curvature(0.0) == pytest.approx(20 - 256, abs=1e-3)


def test_bifurcation_thresholds(fig4):
    lrs = np.array([0.02, 0.031, 0.034, 0.07, 0.099, 0.101, 0.12])
    b = rd.bifurcation(fig4, lrs, transient=2000, keep=128)
    assert list(b.periods[:2]) == [1, 1]
    assert b.periods[2] == 2
    assert b.periods[3] == 0 and b.lyapunov[3] > 0
    assert b.periods[4] >= 0  # bounded just below 2/alpha
    assert list(b.periods[5:]) == [-1, -1]


def test_orbit_period_classification():
    assert rd.orbit_period(np.ones(10)) == 1
    assert rd.orbit_period(np.tile([1.0, 2.0, 3.0], 10)) == 3
    assert rd.orbit_period(np.random.default_rng(1).standard_normal(100)) == 0
    assert rd.orbit_period(np.array([1.0, np.nan])) == -1
    assert rd.describe_period(4) == "period 4"


def test_regions():
    u = jnp.array([-3.0, -1.0, 0.0, 1.9, 2.5])
    assert rd.regions(u).tolist() == [-1, 0, 0, 0, 1]
    np.testing.assert_allclose(rd.region_fractions(u), [0.2, 0.6, 0.2])


def test_iterate_converges_and_detects_divergence():
    grad = lambda x: 2.0 * x  # noqa: E731
    ok = rd.iterate(grad, jnp.ones(3), 0.4, 50, observe=lambda x: jnp.sum(x**2))
    assert ok.diverged_at == -1 and ok.observed[-1] < 1e-10
    bad = rd.iterate(grad, jnp.ones(3), 1.5, 200, bound=1e6)
    assert bad.diverged_at > 0 and not bad.alive[-1] and np.all(np.isfinite(bad.final))


def test_twin_iteration_identical_for_stable_linear_map():
    grad = lambda x: 2.0 * x  # noqa: E731
    twin = rd.twin_iteration(grad, jnp.linspace(0.1, 1.0, 8, dtype=jnp.float32), 0.1, 30, k=3)
    assert twin.divergence.shape == (30,)
    assert np.all(twin.divergence < 1e-6)


def test_twin_iteration_rejects_bad_input():
    grad = lambda x: x  # noqa: E731
    with pytest.raises(ValueError, match="k must be >= 2"):
        rd.twin_iteration(grad, jnp.ones(2), 0.1, 5, k=1)
    with pytest.raises(ValueError, match="lr"):
        rd.iterate(grad, jnp.ones(2), -0.1, 5)
    with pytest.raises(ValueError, match="steps"):
        rd.iterate(grad, jnp.ones(2), 0.1, 0)
    with pytest.raises(ValueError, match="alpha"):
        rd.CheckerboardMap(alpha=-1.0)
    with pytest.raises(ValueError, match="window"):
        rd.moving_average(np.ones(3), 5)


def test_scalar_twin_separates_only_in_the_restrained_regime(fig4):
    p0 = fig4.projection(np.random.default_rng(7).standard_normal((32, 32)))
    a = rd.run_map(fig4, [0.02, 0.07], p0, 1000, k=1).p[:, -100:]
    b = rd.run_map(fig4, [0.02, 0.07], p0, 1000, k=3).p[:, -100:]
    rel = np.mean(np.abs(a - b) / (np.abs(a) + np.abs(b)), axis=1)
    assert rel[0] < 1e-14 and rel[1] > 0.1


def test_energy_fraction_and_moving_average():
    assert rd.energy_fraction([2.0, 0.0], [1.0, 0.0]) == 1.0
    assert rd.energy_fraction([1.0, 1.0], [1.0, 0.0]) == pytest.approx(0.5)
    np.testing.assert_allclose(rd.moving_average([1, 2, 3, 4], 2), [1.5, 2.5, 3.5])


def test_twin_sweep_matches_single_runs_and_marks_divergence():
    grad = lambda x: 2.0 * x  # noqa: E731
    x0 = jnp.linspace(0.1, 1.0, 8, dtype=jnp.float32)
    sweep = rd.twin_sweep(grad, x0, [0.1, 1.2], 40, k=3, bound=1e3)
    single = rd.twin_iteration(grad, x0, 0.1, 40, k=3)
    # Batched and single programs may fuse differently (e.g. into FMAs): equal to rounding.
    np.testing.assert_allclose(sweep.final_a[0], single.final_a, rtol=1e-6)
    np.testing.assert_allclose(sweep.final_b[0], single.final_b, rtol=1e-6)
    assert sweep.diverged_at[0] == -1 and sweep.diverged_at[1] > 0
