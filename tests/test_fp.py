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


def test_round_mantissa_tf32_and_bf16():
    x = np.array([1.0, 1.0 + 2.0**-10, 1.0 + 2.0**-11, 1.0 + 3 * 2.0**-11, -3.14159], np.float32)
    tf32 = fp.round_mantissa(x, 10)
    # 1 + 2^-11 is a tie between 1 and 1 + 2^-10: ties go to the even mantissa (1.0)
    np.testing.assert_array_equal(
        tf32[:4], np.array([1.0, 1 + 2.0**-10, 1.0, 1 + 2.0**-9], np.float32)
    )
    assert abs(tf32[4] - x[4]) <= 2.0**-11 * 4
    bf16 = fp.round_mantissa(x, 7)
    import ml_dtypes

    np.testing.assert_array_equal(bf16, x.astype(ml_dtypes.bfloat16).astype(np.float32))
    np.testing.assert_array_equal(fp.round_mantissa(x, 23), x)


def test_round_mantissa_rejects_bad_arguments():
    with pytest.raises(ValueError, match="bits"):
        fp.round_mantissa(np.ones(2), 0)
    with pytest.raises(ValueError, match="finite"):
        fp.round_mantissa(np.array([np.nan]), 10)


def test_reduced_precision_matmul_error_scales_with_mantissa():
    rng = np.random.default_rng(3)
    a, b = (
        rng.normal(size=(64, 64)).astype(np.float32),
        rng.normal(size=(64, 64)).astype(np.float32),
    )
    exact = a.astype(np.float64) @ b.astype(np.float64)
    err = {
        bits: np.max(np.abs(fp.reduced_precision_matmul(a, b, bits) - exact))
        for bits in (7, 10, 23)
    }
    assert err[23] < err[10] / 50 < err[7] / 200


def test_sequential_sum_differs_from_pairwise_and_checks_shape():
    x = np.random.default_rng(4).normal(size=100_000).astype(np.float32)
    assert fp.sequential_sum(x) != np.sum(x)
    assert fp.sequential_sum(np.array([1.0, 2.0], np.float32)) == 3.0
    with pytest.raises(ValueError, match="values"):
        fp.sequential_sum(np.ones((2, 2)))


def test_one_step_difference_on_the_digits_cnn():
    from flax import nnx

    from restrained.data import load_digits
    from restrained.models import SmallCNN, functional
    from restrained.twins import one_step_difference

    data = load_digits()
    apply, params = functional(SmallCNN(rngs=nnx.Rngs(0)))
    x, y = data.x_train[:128], data.y_train[:128]
    assert one_step_difference(apply, params, x, y, learning_rate=0.1, k=1) == 0.0
    frac = one_step_difference(
        apply, params, x, y, learning_rate=0.1, k=3, momentum=0.9, nesterov=True, weight_decay=5e-4
    )
    assert 0.0 < frac < 0.5


def test_train_twins_k1_copies_stay_identical_and_k3_copies_separate():
    import jax
    from flax import nnx

    from restrained.data import load_digits
    from restrained.models import SmallCNN, functional
    from restrained.twins import train_twins

    data = load_digits()
    apply, params = functional(SmallCNN(width=4, conv_impl="matmul", rngs=nnx.Rngs(0)))
    common = dict(learning_rate=0.5, steps=40, batch_size=32, record_every=10)
    same = train_twins(
        apply, params, data.x_train, data.y_train, k=1, key=jax.random.key(0), **common
    )
    assert same.finite and np.all(same.divergence == 0.0)
    apart = train_twins(
        apply, params, data.x_train, data.y_train, k=3, key=jax.random.key(0), **common
    )
    assert apart.divergence[-1] > 0.0
    np.testing.assert_array_equal(same.loss_a, apart.loss_a)  # copy A is the same run
    with pytest.raises(ValueError, match="record_every"):
        train_twins(
            apply,
            params,
            data.x_train,
            data.y_train,
            key=jax.random.key(0),
            **{**common, "record_every": 7},
        )
