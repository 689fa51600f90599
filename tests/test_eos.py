import jax
import jax.numpy as jnp
import numpy as np
import pytest

from restrained import eos
from restrained.sharpness import dense_hessian


def quadratic(diag):
    """L(θ) = ½ Σ d_i θ_i²: Hessian diag(d), sharpness max(d)."""
    d = jnp.asarray(diag, jnp.float32)
    return lambda p: 0.5 * jnp.sum(d * p["w"] ** 2)


def test_half_mse_convention():
    out = jnp.array([[1.0, 0.0], [0.0, 0.0]])
    tgt = jnp.array([[0.0, 0.0], [0.0, 2.0]])
    assert float(eos.half_mse(out, tgt)) == pytest.approx(0.5 * (1.0 + 4.0) / 2)


def test_mlp_problem_shapes_and_loss():
    loss_fn, params = eos.mlp_problem(50, (8,))
    assert [w.shape for w, _ in params] == [(64, 8), (8, 10)]
    assert np.isfinite(float(loss_fn(params)))
    with pytest.raises(ValueError, match="n must"):
        eos.digits_regression(0)
    with pytest.raises(ValueError, match="sizes"):
        eos.mlp_init(jax.random.PRNGKey(0), [3])


def test_tracked_sharpness_of_a_quadratic_is_exact():
    loss_fn = quadratic([1.0, 3.0, 5.0, 7.0, 2.0, 4.0])
    params = {"w": jnp.ones(6, jnp.float32)}
    run = eos.train_gd(
        loss_fn, params, 0.1, 20, track_every=5, sharpness_fn=eos.lobpcg_sharpness(tol=1e-6)
    )
    np.testing.assert_allclose(run.sharpness, 7.0, rtol=1e-4)
    assert run.threshold == pytest.approx(20.0)
    assert run.hvps.sum() > 0 and run.diverged_at == -1
    # GD on a quadratic: loss decreases monotonically when every η d_i < 2
    assert np.all(np.diff(run.loss) < 0)


def test_fixed_warm_budget_tracks_a_quadratic():
    loss_fn = quadratic([1.0, 3.0, 5.0, 7.0, 2.0, 4.0])
    fn = eos.lobpcg_sharpness(tol=1e-6, warm_steps=2)
    run = eos.train_gd(loss_fn, {"w": jnp.ones(6, jnp.float32)}, 0.1, 20, sharpness_fn=fn)
    np.testing.assert_allclose(run.sharpness, 7.0, rtol=1e-3)
    assert list(run.hvps[1:]) == [2, 2]
    with pytest.raises(ValueError, match="warm_steps"):
        eos.lobpcg_sharpness(warm_steps=0)


def test_weight_decay_and_momentum_thresholds():
    loss_fn = quadratic([1.0, 2.0, 3.0, 4.0, 5.0, 6.0])
    params = {"w": jnp.ones(6, jnp.float32)}
    run = eos.train_gd(loss_fn, params, 0.1, 10, weight_decay=0.5, momentum=0.5, track_every=10)
    assert run.threshold == pytest.approx(30.0)
    np.testing.assert_allclose(run.effective_sharpness, 6.5, rtol=1e-4)


def test_divergent_run_stops_and_reports():
    loss_fn = quadratic([1.0, 2.0, 30.0, 4.0, 5.0, 6.0])
    params = {"w": jnp.ones(6, jnp.float32)}
    run = eos.train_gd(loss_fn, params, 0.2, 400, track_every=10)
    assert run.diverged_at > 0
    assert np.isnan(run.loss[-1])


def test_twin_copies_identical_on_a_stable_quadratic_with_k1_rounding():
    loss_fn = quadratic([1.0, 2.0, 3.0, 4.0, 5.0, 6.0])
    params = {"w": jnp.linspace(0.5, 1.5, 6, dtype=jnp.float32)}
    run = eos.train_gd(loss_fn, params, 0.1, 30, track_every=10, twin_k=3)
    assert run.divergence.shape == (30,)
    assert np.all(run.divergence < 1e-5)


def test_tracking_agrees_with_dense_hessian_on_a_small_mlp():
    loss_fn, params = eos.mlp_problem(40, (6,))
    run = eos.train_gd(
        loss_fn, params, 0.05, 10, track_every=10, sharpness_fn=eos.lobpcg_sharpness(tol=1e-6)
    )
    dense = np.linalg.eigvalsh(np.asarray(dense_hessian(loss_fn, run.final_params)))
    assert run.sharpness[-1] == pytest.approx(dense[-1], rel=1e-3)


def test_gradient_flow_matches_gd_for_tiny_steps():
    loss_fn = quadratic([1.0, 2.0, 3.0, 4.0, 5.0, 6.0])
    params = {"w": jnp.ones(6, jnp.float32)}
    flow = eos.gradient_flow_distance(loss_fn, params, 0.001, 100, every=50)
    assert np.all(flow.relative < 0.01)
    exact = 0.5 * np.sum(np.arange(1, 7) * np.exp(-2 * np.arange(1, 7) * 0.1))
    assert flow.flow_loss[-1] == pytest.approx(exact, rel=1e-4)


def test_onset_helpers():
    assert eos.first_crossing([0, 10, 20], [1.0, 3.0, 5.0], 4.0) == pytest.approx(15.0)
    assert np.isnan(eos.first_crossing([0, 10], [1.0, 2.0], 4.0))
    assert eos.divergence_onset([1e-8, 1e-7, 1e-3, 1e-2], 1e-5) == 3
    assert eos.divergence_onset([1e-8], 1e-5) == -1
    steps, values = np.arange(0, 60, 10), np.array([9.0, 6.0, 7.0, 8.0, 9.0, 9.5])
    assert eos.first_crossing(steps, values, 8.5) == 0.0
    assert eos.sharpening_crossing(steps, values, 8.5) == pytest.approx(35.0)


def test_load_run_round_trip():
    loss_fn = quadratic([1.0, 2.0, 3.0, 4.0, 5.0, 6.0])
    run = eos.train_gd(loss_fn, {"w": jnp.ones(6, jnp.float32)}, 0.1, 20, twin_k=3)
    arrays = {
        "r/loss": run.loss,
        "r/tracked_steps": run.tracked_steps,
        "r/sharpness": run.sharpness,
        "r/hvps": run.hvps,
        "r/config": np.array([run.lr, run.weight_decay, run.momentum, run.diverged_at]),
        "r/divergence": run.divergence,
    }
    back = eos.load_run(arrays, "r")
    np.testing.assert_array_equal(back.sharpness, run.sharpness)
    assert back.threshold == run.threshold and back.divergence is not None


def test_self_stabilization_map_hovers_at_the_edge():
    x, y = eos.self_stabilization_map(0.1, 0.0, 0.01, 1.0, 2.0, 20000)
    assert np.all(np.isfinite(x))
    delta2 = 2 * 1.0 / 2.0  # the balance amplitude squared, 2 alpha / beta
    assert np.mean(x[10000:] ** 2) == pytest.approx(delta2, rel=0.2)
    assert abs(np.mean(y[10000:])) < 0.1 * np.max(np.abs(y[10000:]))
    blown = eos.self_stabilization_map(0.9, 0.0, 0.1, 1.0, 2.0, 4000)[0]
    assert np.isnan(blown[-1])


def test_bad_arguments():
    loss_fn = quadratic([1.0, 2.0, 3.0, 4.0, 5.0, 6.0])
    params = {"w": jnp.ones(6, jnp.float32)}
    with pytest.raises(ValueError, match="lr"):
        eos.train_gd(loss_fn, params, 0.0, 10)
    with pytest.raises(ValueError, match="track_every"):
        eos.train_gd(loss_fn, params, 0.1, 10, track_every=3)
    with pytest.raises(ValueError, match="momentum"):
        eos.train_gd(loss_fn, params, 0.1, 10, momentum=1.0)
    with pytest.raises(ValueError, match="twin_k"):
        eos.train_gd(loss_fn, params, 0.1, 10, twin_k=1)
    with pytest.raises(ValueError, match="lr, alpha and beta"):
        eos.self_stabilization_map(0.0, 0.0, 0.1, -1.0, 1.0, 5)
