"""Tests of the chapter 8-10 helpers: scans, maps, practice."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from restrained import setup
from restrained.maps import measured_boundary, predicted_max_lr
from restrained.practice import layer_sharpness, scheduled_twins, warmup_schedule
from restrained.scans import scan_setup, spread_statistics

setup()


def test_spread_statistics_matches_numpy():
    grid = np.array([[0.9, 0.9, 0.9], [0.8, 0.85, 0.9]])
    s = spread_statistics(grid)
    assert s["std_across_k"] == pytest.approx([0.0, np.std([0.8, 0.85, 0.9])])
    assert s["std_across_seeds"] == pytest.approx([0.05, 0.025, 0.0])
    assert s["ratio"] == pytest.approx(np.mean(s["std_across_k"]) / np.mean([0.05, 0.025, 0.0]))
    assert s["mean_accuracy"] == pytest.approx(np.mean(grid))


def test_spread_statistics_rejects_bad_grids():
    with pytest.raises(ValueError, match="grid"):
        spread_statistics(np.ones(3))
    with pytest.raises(ValueError, match="finite"):
        spread_statistics(np.array([[1.0, np.nan], [1.0, 1.0]]))
    assert np.isnan(spread_statistics(np.ones((2, 2)))["ratio"])


def test_scan_setup_profiles():
    assert scan_setup("ci")["learning_rates"][0] == 0.1
    assert scan_setup("gpu")["dataset"] == "mnist1d"
    with pytest.raises(ValueError, match="profile"):
        scan_setup("paper")


def test_predicted_max_lr():
    assert predicted_max_lr(3.0, 1.0) == 0.5
    with pytest.raises(ValueError, match="sharpness"):
        predicted_max_lr(0.0, 0.0)


def test_measured_boundary():
    cells = [
        {"learning_rate": lr, "weight_decay": 0.0, "diverged": lr > 0.3} for lr in (0.1, 0.2, 0.4)
    ]
    assert measured_boundary(cells, 0.0) == {"largest_trained": 0.2, "smallest_diverged": 0.4}
    with pytest.raises(ValueError, match="weight_decay"):
        measured_boundary(cells, 1.0)


def test_warmup_schedule():
    s = warmup_schedule(1.0, 6, 4)
    np.testing.assert_allclose(s, [0.25, 0.5, 0.75, 1, 1, 1])
    assert np.all(warmup_schedule(0.5, 3, 0) == np.float32(0.5))
    with pytest.raises(ValueError, match="warmup"):
        warmup_schedule(1.0, 3, 5)


def quadratic(curvatures):
    c = jnp.asarray(curvatures, jnp.float32)

    def loss(p):
        return 0.5 * jnp.sum(c * p["w"] ** 2)

    return loss, {"w": jnp.linspace(0.3, 1.7, c.size, dtype=jnp.float32)}


def test_scheduled_twins_quadratic_threshold():
    loss, p = quadratic([1.0, 4.0])
    stable = scheduled_twins(loss, p, np.full(50, 0.45, np.float32))
    unstable = scheduled_twins(loss, p, np.full(50, 0.55, np.float32))
    assert stable["loss"][-1] < stable["loss"][0]  # 0.45 < 2/4
    assert unstable["loss"][-1] > unstable["loss"][0]  # 0.55 > 2/4
    assert stable["D"].shape == (50,)


def test_layer_sharpness_finds_block_curvatures():
    def loss(p):
        return 0.5 * (3.0 * jnp.sum(p["a"] ** 2) + 7.0 * jnp.sum(p["b"] ** 2))

    params = {"a": jnp.ones(4), "b": jnp.ones(2)}
    out = layer_sharpness(loss, params, iterations=5, key=jax.random.PRNGKey(1))
    assert out["a"] == pytest.approx(3.0, rel=1e-5)
    assert out["b"] == pytest.approx(7.0, rel=1e-5)


def test_scheduled_twins_k1_pair_is_identical():
    loss, p = quadratic([1.0, 4.0])
    run = scheduled_twins(loss, p, np.full(10, 0.3, np.float32), k=1)
    assert np.all(run["D"] == 0.0)
    np.testing.assert_array_equal(run["params_1"]["w"], run["params_k"]["w"])


def test_gd_sensitivity_needs_k1():
    from restrained.scans import gd_sensitivity

    with pytest.raises(ValueError, match="ks"):
        gd_sensitivity(ks=(3, 5))
