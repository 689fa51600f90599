"""The ensemble trainer: lockstep identity, k-trick differences, non-finite members,
kill-and-resume bit-identity and multi-device equality."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from restrained.data import Split, load_digits
from restrained.ensemble import Members, member_sgd, phase_learning_rates, step_table
from restrained.models import build_network
from restrained.optim import perturbed_sgd
from restrained.train import TrainConfig, paper_config, train_ensemble

ROOT = Path(__file__).resolve().parents[1]
CHECKPOINT_EVERY = 4  # divides the 8 steps of an epoch: one compiled chunk

# Member 5 has a learning rate large enough to blow up; members 0 and 1 are twins.
MEMBERS = Members(
    seeds=(0, 0, 0, 1, 1, 0, 1, 0),
    ks=(1, 1, 3, 1, 3, 1, 5, 5),
    learning_rates=(0.2, 0.2, 0.2, 0.2, 0.2, 1e5, 0.2, 0.2),
    weight_decays=(5e-4,) * 8,
)


def case() -> tuple:
    """A small digits problem: 256 training images, batch 32, 8 steps per epoch."""
    d = load_digits()
    data = Split(d.x_train[:256], d.y_train[:256], d.x_test[:64], d.y_test[:64], 10, "digits")
    net = build_network("small_cnn", (8, 8, 1), width=4, depth=1)
    config = TrainConfig(
        epochs=3,
        batch_size=32,
        momentum=0.9,
        nesterov=True,
        lr_milestones=(2,),
        checkpoint_every=CHECKPOINT_EVERY,
    )
    return net, data, config


def run_case(checkpoint_dir: str, out: str | None = None, kill_at: int | None = None) -> dict:
    """Train the case (used in-process and by the subprocess tests); save arrays to ``out``."""

    def on_checkpoint(step: int) -> None:
        if kill_at is not None and step >= kill_at:
            os.kill(os.getpid(), signal.SIGKILL)

    net, data, config = case()
    result = train_ensemble(
        net, data, MEMBERS, config, checkpoint_dir=checkpoint_dir, on_checkpoint=on_checkpoint
    )
    leaves = {
        str(i): a for i, a in enumerate(jax.tree_util.tree_leaves((result.params, result.stats)))
    }
    if out is not None:
        np.savez(out, devices=result.devices, **leaves)
    return {"result": result, "leaves": leaves}


SUBPROCESS = """
import sys
sys.path.insert(0, {tests!r})
import restrained
restrained.setup()
import test_train
test_train.run_case({ckpt!r}, {out!r}, {kill_at!r})
"""


def run_subprocess(tmp: Path, ckpt: Path, out: Path | None, kill_at=None, devices=1):
    env = dict(os.environ, PYTHONPATH=str(ROOT / "src"))
    # Keep the parent's rounding environment (make portability), only add the device count.
    flags = os.environ.get("XLA_FLAGS", "")
    env["XLA_FLAGS"] = f"{flags} --xla_force_host_platform_device_count={devices}".strip()
    code = SUBPROCESS.format(
        tests=str(ROOT / "tests"), ckpt=str(ckpt), out=None if out is None else str(out),
        kill_at=kill_at,
    )  # fmt: skip
    return subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=600
    )


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    return run_case(str(tmp_path_factory.mktemp("ckpt_reference")))


def leaf_params(result, member):
    return [np.asarray(a[member]) for a in jax.tree_util.tree_leaves(result.params)]


def test_twins_of_one_seed_stay_bit_identical(reference):
    r = reference["result"]
    for a, b in zip(leaf_params(r, 0), leaf_params(r, 1), strict=True):
        np.testing.assert_array_equal(a, b)
    assert all(h["D"][1] == 0.0 for h in r.history)


def test_k3_and_k5_members_differ_from_their_twin(reference):
    r = reference["result"]
    for member, twin in ((2, 0), (4, 3), (6, 3), (7, 0)):
        assert any(
            not np.array_equal(a, b)
            for a, b in zip(leaf_params(r, member), leaf_params(r, twin), strict=True)
        )
        assert r.history[-1]["D"][member] > 0
    # D per layer is recorded for each parameter tensor and is zero for the twins.
    layers = r.history[-1]["D_layers"]
    assert set(layers) == set(r.layer_names) and "head/kernel" in layers
    assert all(v[1] == 0.0 for v in layers.values())


def test_seeds_start_differently_and_references_are_right(reference):
    r = reference["result"]
    assert MEMBERS.references.tolist() == [0, 0, 0, 3, 3, 5, 3, 0]
    assert not np.array_equal(leaf_params(r, 0)[0], leaf_params(r, 3)[0])


def test_diverged_member_is_frozen_and_others_continue(reference):
    r = reference["result"]
    assert r.diverged_step[5] >= 0
    assert (np.delete(r.diverged_step, 5) == -1).all()
    assert all(np.isfinite(a).all() for a in leaf_params(r, 5))
    assert all(np.isfinite(a).all() for a in jax.tree_util.tree_leaves(r.stats))
    assert r.history[-1]["test_accuracy"][0] > r.history[0]["test_accuracy"][0] - 0.05
    assert r.history[-1]["test_accuracy"][0] > 0.5


def test_history_has_every_epoch_and_metric(reference):
    r = reference["result"]
    assert [h["epoch"] for h in r.history] == [1, 2, 3]
    assert [h["learning_rate_phase"] for h in r.history] == [0, 0, 1]
    for key in ("train_loss", "train_accuracy", "test_loss", "test_accuracy", "D"):
        assert len(r.history[-1][key]) == MEMBERS.size
    assert r.steps == 24 and r.resumed_from_step == 0


@pytest.mark.slow
def test_resume_from_checkpoint_is_bit_identical(reference, tmp_path):
    """Interrupt in-process after the first checkpoint, resume, compare with no interruption."""
    ckpt = tmp_path / "ckpt"

    class Stop(Exception):
        pass

    def stop(step):
        raise Stop

    net, data, config = case()
    with pytest.raises(Stop):
        train_ensemble(net, data, MEMBERS, config, checkpoint_dir=ckpt, on_checkpoint=stop)
    resumed = run_case(str(ckpt))
    assert resumed["result"].resumed_from_step == CHECKPOINT_EVERY
    for key, value in reference["leaves"].items():
        np.testing.assert_array_equal(resumed["leaves"][key], value)
    # NaN != NaN: compare the records as JSON text.
    assert json.dumps(resumed["result"].history) == json.dumps(reference["result"].history)


@pytest.mark.slow
def test_killed_process_resumes_bit_identical(reference, tmp_path):
    ckpt = tmp_path / "ckpt"
    killed = run_subprocess(tmp_path, ckpt, None, kill_at=2 * CHECKPOINT_EVERY)
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-2000:]
    resumed = run_case(str(ckpt))
    assert resumed["result"].resumed_from_step == 2 * CHECKPOINT_EVERY
    for key, value in reference["leaves"].items():
        np.testing.assert_array_equal(resumed["leaves"][key], value)


@pytest.mark.slow
def test_four_devices_give_the_single_device_result(reference, tmp_path):
    out = tmp_path / "four.npz"
    done = run_subprocess(tmp_path, tmp_path / "ckpt", out, devices=4)
    assert done.returncode == 0, done.stderr[-3000:]
    got = np.load(out)
    assert int(got["devices"]) == 4
    assert reference["result"].devices == len(jax.devices())
    for key, value in reference["leaves"].items():
        np.testing.assert_array_equal(got[key], value)


def test_resume_refuses_another_configuration(reference, tmp_path):
    ckpt = tmp_path / "ckpt"
    net, data, config = case()

    def stop(step):
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        train_ensemble(net, data, MEMBERS, config, checkpoint_dir=ckpt, on_checkpoint=stop)
    other = Members.grid([0], [1, 3], [0.2], [5e-4])
    with pytest.raises(ValueError, match="another configuration"):
        train_ensemble(net, data, other, config, checkpoint_dir=ckpt)


# ------------------------------------------------------------------ member SGD


@pytest.mark.parametrize(
    "kwargs",
    [
        {},
        {"momentum": 0.9},
        {"momentum": 0.9, "nesterov": True, "weight_decay": 5e-4},
        {"weight_decay": 0.01},
    ],
)
@pytest.mark.parametrize("k", [1, 3, 7])
def test_member_sgd_is_bit_identical_to_perturbed_sgd(kwargs, k):
    rng = np.random.default_rng(k)
    params = {"w": jnp.asarray(rng.normal(size=(64, 8)).astype(np.float32))}
    grads = [{"w": jnp.asarray(rng.normal(size=(64, 8)).astype(np.float32))} for _ in range(4)]
    lr = 0.1
    opt = perturbed_sgd(lr, k=k, **kwargs)
    momentum = kwargs.get("momentum", 0.0)
    wd = kwargs.get("weight_decay", 0.0)

    @jax.jit
    def reference_step(p, s, g):
        u, s = opt.update(g, s, p)
        return optax.apply_updates(p, u), s

    @jax.jit
    def member_step(p, b, g, first):
        return member_sgd(
            g, b, p, first, jnp.float32(lr * k), jnp.float32(k), jnp.float32(wd),
            momentum=momentum, nesterov=kwargs.get("nesterov", False),
            use_weight_decay=wd > 0,
        )  # fmt: skip

    p_ref, state = params, opt.init(params)
    p_mem, buf = params, jax.tree_util.tree_map(jnp.zeros_like, params)
    for i, g in enumerate(grads):
        p_ref, state = reference_step(p_ref, state, g)
        p_mem, buf = member_step(p_mem, buf, g, jnp.asarray(i == 0))
        np.testing.assert_array_equal(np.asarray(p_mem["w"]), np.asarray(p_ref["w"]))


def test_step_table_rounds_the_double_product_once():
    members = Members.grid([0], [1, 3], [0.1], [0.0])
    table = step_table(members, 3, 0.1)
    assert table.dtype == np.float32 and table.shape == (3, 2)
    assert table[1, 1] == np.float32(0.1 * 0.1 * 3)
    assert phase_learning_rates(0.1, 3, 0.1) == [0.1, 0.1 * 0.1, 0.1 * 0.1 * 0.1]


def test_paper_config_is_the_papers_recipe():
    cfg, lr, wd = paper_config()
    assert (lr, wd, cfg.batch_size, cfg.momentum, cfg.nesterov) == (0.1, 5e-4, 128, 0.9, True)
    assert cfg.lr_milestones == (40, 80, 120, 160) and cfg.epochs == 200 and cfg.augment


@pytest.mark.parametrize(
    ("kwargs", "name"),
    [
        ({"seeds": (), "ks": (), "learning_rates": (), "weight_decays": ()}, "seeds"),
        ({"seeds": (0,), "ks": (0,), "learning_rates": (0.1,), "weight_decays": (0.0,)}, "k"),
        ({"seeds": (0,), "ks": (1,), "learning_rates": (-1.0,), "weight_decays": (0.0,)}, "lea"),
        ({"seeds": (0,), "ks": (1,), "learning_rates": (0.1,), "weight_decays": (-1.0,)}, "wei"),
        ({"seeds": (0, 1), "ks": (1,), "learning_rates": (0.1,), "weight_decays": (0.0,)}, "ks"),
    ],
)
def test_members_reject_bad_input(kwargs, name):
    with pytest.raises(ValueError, match=name):
        Members(**kwargs)


@pytest.mark.parametrize(
    ("kwargs", "name"),
    [
        ({"epochs": 0}, "epochs"),
        ({"batch_size": 0}, "batch_size"),
        ({"momentum": 1.0}, "momentum"),
        ({"nesterov": True}, "nesterov"),
        ({"lr_milestones": (5, 3)}, "lr_milestones"),
        ({"lr_decay": 0.0}, "lr_decay"),
    ],
)
def test_train_config_rejects_bad_input(kwargs, name):
    with pytest.raises(ValueError, match=name):
        TrainConfig(**kwargs)


def test_mismatched_data_and_network_is_a_clear_error():
    net, data, _ = case()
    other = build_network("small_cnn1d", (40, 1))
    with pytest.raises(ValueError, match="was built for"):
        train_ensemble(other, data, MEMBERS, TrainConfig(epochs=1))
    with pytest.raises(ValueError, match="batch_size"):
        train_ensemble(net, data, MEMBERS, TrainConfig(epochs=1, batch_size=10_000))
    with pytest.raises(ValueError, match="checkpoint_dir"):
        train_ensemble(net, data, MEMBERS, TrainConfig(epochs=1, checkpoint_every=2))


def test_json_ready_member_description():
    text = json.dumps(MEMBERS.describe())
    assert '"reference": 0' in text


@pytest.mark.slow
def test_batchnorm_network_trains_in_the_ensemble():
    """ResNet-20 (BatchNorm, crop-and-flip) through the whole engine on tiny synthetic data."""
    from restrained.data import synthetic_images

    data = synthetic_images(16, 8, (8, 8, 3))
    net = build_network("resnet20", (8, 8, 3))
    config = TrainConfig(epochs=1, batch_size=8, momentum=0.9, nesterov=True, augment=True)
    result = train_ensemble(net, data, Members.grid([1], [1, 1, 3]), config)
    _, stats0 = net.init(jax.random.split(jax.random.PRNGKey(1), 3)[0])
    pairs = zip(
        jax.tree_util.tree_leaves(result.stats), jax.tree_util.tree_leaves(stats0), strict=True
    )
    assert all(not np.array_equal(np.asarray(a)[0], np.asarray(b)) for a, b in pairs)
    assert (result.diverged_step == -1).all()
    for a in jax.tree_util.tree_leaves(result.params):
        np.testing.assert_array_equal(np.asarray(a)[0], np.asarray(a)[1])
    assert result.history[-1]["D"][2] > 0
