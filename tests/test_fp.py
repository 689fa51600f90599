import jax.numpy as jnp
import numpy as np
import pytest

from restrained import fp


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_ulp_matches_definition(dtype):
    x = np.array([1.0, 3.0, 0.1, -2.5, 1e-3], dtype=dtype)
    got = fp.ulp(x)
    assert got.dtype == dtype
    np.testing.assert_array_equal(got, np.nextafter(np.abs(x), np.inf).astype(dtype) - np.abs(x))
    assert fp.ulp(dtype(1.0)) == np.finfo(dtype).eps


def test_ulp_of_jax_array_keeps_dtype_and_powers_of_two():
    x = jnp.asarray([1.0, 2.0, 4.0, 0.5], jnp.float32)
    got = fp.ulp(x)
    assert got.dtype == jnp.float32
    np.testing.assert_array_equal(np.asarray(got), np.float32(2.0**-23) * np.asarray(x))


def test_ulp_of_zero_is_smallest_subnormal_and_python_float_is_float64():
    assert fp.ulp(np.float32(0.0)) == np.float32(1.4e-45)
    assert fp.ulp(1.0) == 2.0**-52


@pytest.mark.parametrize("bad", [np.array([1.0, np.inf]), np.array([np.nan]), np.array([1, 2])])
def test_ulp_rejects_non_finite_and_integers(bad):
    with pytest.raises(ValueError, match="x must"):
        fp.ulp(bad)


def test_machine_epsilon():
    assert fp.machine_epsilon(np.float32) == 2.0**-23
    assert fp.machine_epsilon("float64") == 2.0**-52


def test_relative_l1_values():
    a = np.array([1.0, 0.0, -2.0, 0.0], np.float32)
    b = np.array([3.0, 0.0, -2.0, 5.0], np.float32)
    # terms: |1-3|/4 = 0.5, 0/0 -> 0, 0, 5/5 = 1  => D = 2 * 1.5 / 4
    assert float(fp.relative_l1(a, b)) == pytest.approx(0.75)
    assert float(fp.relative_l1(a, a)) == 0.0
    assert float(fp.relative_l1(np.zeros(3), np.zeros(3))) == 0.0
    assert float(fp.relative_l1(np.ones(3), -np.ones(3))) == pytest.approx(2.0)


def test_relative_l1_pools_pytree_entries():
    a = {"w": jnp.ones((2, 2)), "b": jnp.zeros(4)}
    b = {"w": jnp.ones((2, 2)) * 3, "b": jnp.zeros(4)}
    # four entries at 0.5, four at 0 => D = 2 * 2 / 8
    assert float(fp.relative_l1(a, b)) == pytest.approx(0.5)


def test_relative_l1_one_ulp_apart_is_order_epsilon():
    w = np.random.default_rng(0).normal(size=1000).astype(np.float32)
    d = float(fp.relative_l1(w, np.nextafter(w, np.inf)))
    assert 2.0**-25 < d < 2.0**-22


def test_relative_l1_rejects_mismatches():
    with pytest.raises(ValueError, match="structure"):
        fp.relative_l1({"a": np.ones(2)}, {"b": np.ones(2)})
    with pytest.raises(ValueError, match="shapes"):
        fp.relative_l1(np.ones(2), np.ones(3))
    with pytest.raises(ValueError, match="no entries"):
        fp.relative_l1({}, {})


def test_ieee_divide_is_correctly_rounded_unlike_xla_default():
    d = np.random.default_rng(1).normal(size=100_000).astype(np.float32)
    exact = d / np.float32(3)
    np.testing.assert_array_equal(np.asarray(fp.ieee_divide(jnp.asarray(d), 3)), exact)
    # XLA rewrites d / 3 into d * (1/3); if that ever stops, the book's chapter 1 must change.
    assert fp.differing_fraction(np.asarray(jnp.asarray(d) / 3.0), exact) > 0.1


def test_perturbed_product_matches_numpy_reference_and_k1_is_exact():
    d = np.random.default_rng(2).normal(size=50_000).astype(np.float32)
    base = np.float32(0.1) * d
    np.testing.assert_array_equal(np.asarray(fp.perturbed_product(d, 0.1, 1)), base)
    for k in (3, 5, 7):
        ref = np.float32(0.1 * k) * (d / np.float32(k))
        np.testing.assert_array_equal(np.asarray(fp.perturbed_product(d, 0.1, k)), ref)
    frac = fp.differing_fraction(fp.perturbed_product(d, 0.1, 3), base)
    assert 0.05 < frac < 0.95
    rel = np.abs(np.asarray(fp.perturbed_product(d, 0.1, 3)) - base) / np.abs(base)
    assert rel.max() <= 2.0**-23


def test_differing_fraction_checks_shapes():
    assert fp.differing_fraction(np.ones(4), np.array([1, 2, 1, 2.0])) == 0.5
    with pytest.raises(ValueError, match="same shape"):
        fp.differing_fraction(np.ones(2), np.ones(3))
