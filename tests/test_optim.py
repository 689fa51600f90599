import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from restrained import fp
from restrained.optim import perturbed_sgd


def reference_sgd(params, grads_seq, lr, momentum=0.0, nesterov=False, weight_decay=0.0):
    """The authors' recursion written independently, applied as p - lr * d.

    Each step's direction is computed in one jitted function, as the optimizer's update is:
    XLA on CPU contracts ``mu * b + g`` into a fused multiply-add, so a NumPy reference
    would differ in the last bit for reasons that have nothing to do with ``k``.
    """

    @jax.jit
    def direction(p, buf, g, first):
        if weight_decay:
            g = g + weight_decay * p
        if momentum:
            buf = jnp.where(first, g, momentum * buf + g)
            d = g + momentum * buf if nesterov else buf
        else:
            d = g
        return -lr * d, buf

    p = jnp.asarray(params, jnp.float32)
    buf = jnp.zeros_like(p)
    for i, g in enumerate(grads_seq):
        u, buf = direction(p, buf, jnp.asarray(g, jnp.float32), i == 0)
        p = p + u
    return np.asarray(p)


def numpy_sgd(params, grads_seq, lr, momentum=0.0):
    """The same recursion in NumPy: no fused multiply-add anywhere."""
    p, buf = np.array(params, np.float32), None
    for g in grads_seq:
        g = np.asarray(g, np.float32)
        buf = g.copy() if buf is None else np.float32(momentum) * buf + g
        p = p + (-np.float32(lr)) * (buf if momentum else g)
    return p


def run(opt, params, grads_seq):
    state = opt.init(params)
    update = jax.jit(opt.update)
    for g in grads_seq:
        u, state = update(jnp.asarray(g), state, params)
        params = optax.apply_updates(params, u)
    return np.asarray(params)


@pytest.fixture
def problem():
    rng = np.random.default_rng(0)
    params = jnp.asarray(rng.normal(size=4096).astype(np.float32))
    grads = [rng.normal(size=4096).astype(np.float32) for _ in range(6)]
    return params, grads


@pytest.mark.parametrize(
    "kwargs",
    [
        {},
        {"momentum": 0.9},
        {"momentum": 0.9, "nesterov": True},
        {"momentum": 0.9, "nesterov": True, "weight_decay": 5e-4},
        {"weight_decay": 0.01},
    ],
)
def test_k1_is_bit_identical_to_plain_recursion(problem, kwargs):
    params, grads = problem
    got = run(perturbed_sgd(0.1, k=1, **kwargs), params, grads)
    want = reference_sgd(np.asarray(params), grads, 0.1, **kwargs)
    np.testing.assert_array_equal(got, want)


def test_k1_agrees_with_numpy_to_fma_rounding(problem):
    params, grads = problem
    got = run(perturbed_sgd(0.1, k=1, momentum=0.9), params, grads)
    want = numpy_sgd(np.asarray(params), grads, 0.1, momentum=0.9)
    np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-6)
    np.testing.assert_array_equal(
        run(perturbed_sgd(0.1), params, grads), numpy_sgd(params, grads, 0.1)
    )


def test_k3_equals_k1_to_rounding_but_not_bitwise(problem):
    params, grads = problem
    one = run(perturbed_sgd(0.1, k=1, momentum=0.9, nesterov=True), params, grads[:1])
    three = run(perturbed_sgd(0.1, k=3, momentum=0.9, nesterov=True), params, grads[:1])
    frac = fp.differing_fraction(one, three)
    assert 0.01 < frac < 0.5  # only a few entries of p - step round differently
    np.testing.assert_allclose(three, one, rtol=0, atol=float(np.max(fp.ulp(one))))


def test_first_update_of_k3_matches_perturbed_product(problem):
    params, grads = problem
    opt = perturbed_sgd(0.1, k=3)
    u, _ = opt.update(jnp.asarray(grads[0]), opt.init(params), params)
    np.testing.assert_array_equal(
        np.asarray(u), -np.asarray(fp.perturbed_product(grads[0], 0.1, 3))
    )


def test_momentum_buffer_starts_at_first_gradient(problem):
    params, grads = problem
    opt = perturbed_sgd(0.1, momentum=0.9)
    _, state = opt.update(jnp.asarray(grads[0]), opt.init(params), params)
    np.testing.assert_array_equal(np.asarray(state.momentum), grads[0])
    assert int(state.count) == 1


def test_schedule_is_called_with_the_step_count(problem):
    params, grads = problem
    seen = []

    def schedule(count):
        seen.append(count)
        return jnp.where(count < 2, 0.1, 0.01).astype(jnp.float32)

    got = run(perturbed_sgd(schedule), params, grads[:3])
    p = np.asarray(params)
    for i, g in enumerate(grads[:3]):
        p = p + (-np.float32(0.1 if i < 2 else 0.01)) * g
    np.testing.assert_array_equal(got, p)
    assert seen


def test_weight_decay_needs_params(problem):
    params, grads = problem
    opt = perturbed_sgd(0.1, weight_decay=0.1)
    with pytest.raises(ValueError, match="params"):
        opt.update(jnp.asarray(grads[0]), opt.init(params))


def test_works_on_pytrees():
    params = {"a": jnp.ones(3), "b": {"c": jnp.zeros((2, 2))}}
    grads = {"a": jnp.ones(3), "b": {"c": jnp.ones((2, 2))}}
    opt = perturbed_sgd(0.5, k=3, momentum=0.5)
    u, _ = opt.update(grads, opt.init(params), params)
    assert jax.tree_util.tree_structure(u) == jax.tree_util.tree_structure(params)
    np.testing.assert_allclose(np.asarray(u["a"]), -0.5, rtol=1e-7)


@pytest.mark.parametrize(
    ("kwargs", "name"),
    [
        ({"learning_rate": 0.0}, "learning_rate"),
        ({"learning_rate": -0.1}, "learning_rate"),
        ({"learning_rate": float("nan")}, "learning_rate"),
        ({"learning_rate": float("inf")}, "learning_rate"),
        ({"learning_rate": 0.1, "k": 0}, "k"),
        ({"learning_rate": 0.1, "k": 2.5}, "k"),
        ({"learning_rate": 0.1, "k": 3.0}, "k"),
        ({"learning_rate": 0.1, "k": True}, "k"),
        ({"learning_rate": 0.1, "momentum": -0.1}, "momentum"),
        ({"learning_rate": 0.1, "momentum": 1.0}, "momentum"),
        ({"learning_rate": 0.1, "weight_decay": -1e-4}, "weight_decay"),
        ({"learning_rate": 0.1, "weight_decay": float("nan")}, "weight_decay"),
        ({"learning_rate": 0.1, "nesterov": True}, "nesterov"),
    ],
)
def test_bad_arguments_name_the_argument(kwargs, name):
    with pytest.raises(ValueError, match=name):
        perturbed_sgd(**kwargs)
