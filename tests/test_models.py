"""Models: shapes, parameter counts, BatchNorm modes, convolution implementations, errors."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from restrained import models
from restrained.augment import crop_and_flip


def count(tree) -> int:
    return sum(int(np.prod(a.shape)) for a in jax.tree_util.tree_leaves(tree))


def resnet_param_count(n: int, classes: int = 10) -> int:
    """Independent count: convs (no bias), BN scale+shift, option-B shortcuts, FC."""
    total = 3 * 3 * 3 * 16 + 2 * 16
    c_in = 16
    for c_out in (16, 32, 64):
        for _ in range(n):
            total += 9 * c_in * c_out + 2 * c_out + 9 * c_out * c_out + 2 * c_out
            if c_in != c_out:
                total += c_in * c_out + 2 * c_out
            c_in = c_out
    return total + 64 * classes + classes


@pytest.mark.slow
@pytest.mark.parametrize(("name", "n"), [("resnet20", 3), ("resnet56", 9)])
def test_resnet_parameter_counts(name, n):
    params, stats = models.build_network(name, (32, 32, 3)).init(jax.random.PRNGKey(0))
    assert count(params) == resnet_param_count(n)
    assert 0.26e6 < count(params) < 0.28e6 if n == 3 else 0.85e6 < count(params) < 0.87e6
    assert count(stats) > 0


@pytest.mark.slow
def test_resnet20_forward_train_and_eval_modes():
    net = models.build_network("resnet20", (32, 32, 3), activation="swish")
    params, stats = net.init(jax.random.PRNGKey(0))
    x = jax.random.normal(jax.random.PRNGKey(1), (4, 32, 32, 3))
    logits, new_stats = net.apply(params, stats, x, True)
    assert logits.shape == (4, 10)
    # Training mode updates running statistics as r <- 0.9 r + 0.1 batch (mean starts at 0).
    first = np.asarray(new_stats["bn1"]["mean"][...])
    assert np.any(first != 0)
    eval_logits, eval_stats = net.apply(params, new_stats, x, False)
    leaves = zip(
        jax.tree_util.tree_leaves(eval_stats), jax.tree_util.tree_leaves(new_stats), strict=True
    )
    for a, b in leaves:
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    assert not np.allclose(np.asarray(eval_logits), np.asarray(logits))


@pytest.mark.slow
def test_batchnorm_running_mean_uses_pytorch_momentum():
    net = models.build_network("resnet20", (8, 8, 3))
    params, stats = net.init(jax.random.PRNGKey(0))
    x = jax.random.normal(jax.random.PRNGKey(1), (16, 8, 8, 3)) + 3.0
    _, new_stats = net.apply(params, stats, x, True)
    module = nnx.merge(net.graphdef, params, stats)
    conv_out = models.conv_apply(module.conv1, x, "auto")
    want = 0.1 * np.asarray(conv_out.mean(axis=(0, 1, 2)))
    np.testing.assert_allclose(np.asarray(new_stats["bn1"]["mean"][...]), want, rtol=1e-5)


@pytest.mark.slow
def test_vgg16_and_small_models_shapes():
    vgg = models.build_network("vgg16", (32, 32, 3))
    params, _ = vgg.init(jax.random.PRNGKey(0))
    assert 14.5e6 < count(params) < 15.1e6
    one_d = models.build_network("small_cnn1d", (40, 1))
    p, s = one_d.init(jax.random.PRNGKey(0))
    logits, _ = one_d.apply(p, s, jnp.ones((3, 40, 1)), True)
    assert logits.shape == (3, 10)
    small = models.build_network("small_cnn", (8, 8, 1), width=4, depth=1)
    p, s = small.init(jax.random.PRNGKey(0))
    assert small.apply(p, s, jnp.ones((2, 8, 8, 1)), True)[0].shape == (2, 10)


@pytest.mark.parametrize(
    ("name", "shape", "match"),
    [
        ("resnet20", (40, 1), "needs images"),
        ("small_cnn1d", (8, 8, 1), "1-D signals"),
        ("vgg16", (28, 28, 1), "multiples of 32"),
        ("alexnet", (32, 32, 3), "model must be one of"),
    ],
)
def test_model_dataset_mismatch_is_a_clear_error(name, shape, match):
    with pytest.raises(ValueError, match=match):
        models.build_network(name, shape)


def test_wrong_input_shape_at_call_time():
    net = models.build_network("small_cnn1d", (40, 1))
    p, s = net.init(jax.random.PRNGKey(0))
    with pytest.raises(ValueError, match="expects signals"):
        net.apply(p, s, jnp.ones((2, 30, 1)), True)
    with pytest.raises(ValueError, match="conv_impl"):
        models.build_network("resnet20", (32, 32, 3), conv_impl="fft")
    with pytest.raises(ValueError, match="activation"):
        models.build_network("resnet20", (32, 32, 3), activation="tanh")


@pytest.mark.parametrize(
    ("kernel", "stride", "padding", "shape"),
    [
        ((3, 3), 1, "SAME", (2, 8, 8, 3)),
        ((3, 3), 2, ((1, 1), (1, 1)), (2, 8, 8, 3)),
        ((1, 1), 2, ((0, 0), (0, 0)), (2, 8, 8, 3)),
        ((5,), 1, "SAME", (2, 40, 2)),
    ],
)
def test_matmul_convolution_agrees_with_xla(kernel, stride, padding, shape):
    conv = nnx.Conv(shape[-1], 4, kernel, strides=stride, padding=padding, rngs=nnx.Rngs(0))
    x = jax.random.normal(jax.random.PRNGKey(2), shape)
    want = np.asarray(models.conv_apply(conv, x, "lax"))
    got = np.asarray(models.conv_apply(conv, x, "matmul"))
    assert got.shape == want.shape
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


def test_small_cnn_default_is_unchanged_xla_convolution():
    module = models.SmallCNN(rngs=nnx.Rngs(0))
    assert module.conv_impl == "lax"


def test_crop_and_flip_moves_pixels_and_pads_with_the_given_value():
    images = jnp.arange(2 * 4 * 4 * 1, dtype=jnp.float32).reshape(2, 4, 4, 1) + 1
    outs = [crop_and_flip(jax.random.PRNGKey(i), images, 2, -7.0) for i in range(20)]
    assert all(o.shape == images.shape for o in outs)
    values = np.concatenate([np.asarray(o).ravel() for o in outs])
    assert set(np.unique(values)) <= set(np.arange(1, 33, dtype=np.float32)) | {-7.0}
    assert (values == -7.0).any()
    assert any(not np.array_equal(np.asarray(o), np.asarray(images)) for o in outs)
    again = crop_and_flip(jax.random.PRNGKey(3), images, 2, -7.0)
    np.testing.assert_array_equal(np.asarray(again), np.asarray(outs[3]))
    with pytest.raises(ValueError, match="images"):
        crop_and_flip(jax.random.PRNGKey(0), images[0], 2)


def test_swish5_is_the_authors_activation():
    x = jnp.linspace(-2, 2, 9)
    np.testing.assert_allclose(
        np.asarray(models.swish5(x)), np.asarray(x / (1 + jnp.exp(-5 * x))), rtol=1e-6
    )
