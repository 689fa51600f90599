"""The command line: help, argument errors, and a tiny end-to-end run."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from restrained import cli, experiments, provenance

ROOT = Path(__file__).resolve().parents[1]


def run_cli(*args: str, cwd: Path = ROOT) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "restrained", *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=600,
        env={"PYTHONPATH": str(ROOT / "src"), "PATH": "/usr/bin:/bin", "HOME": str(cwd)},
    )


def test_help_documents_experiments_profiles_and_options(capsys):
    with pytest.raises(SystemExit) as done:
        cli.main(["run", "--help"])
    assert done.value.code == 0
    text = capsys.readouterr().out
    for word in (*experiments.EXPERIMENTS, *experiments.PROFILES, "--out", "--checkpoint-every"):
        assert word in text


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["run", "sensitivity"], "--profile"),
        (["run", "table1", "--profile", "ci"], "invalid choice"),
        (["run", "sensitivity", "--profile", "huge"], "invalid choice"),
        (["run", "sensitivity", "--profile", "ci", "--epochs", "0"], "integer >= 1"),
        (["run", "sensitivity", "--profile", "ci", "--seeds", "two"], "integer >= 1"),
        (["run", "sensitivity", "--profile", "ci", "--checkpoint-every", "5"], "--checkpoint-dir"),
        (["run", "divergence", "--profile", "ci", "--checkpoint-dir", "x"], "sensitivity"),
        (["run", "sensitivity", "--profile", "ci", "--bogus"], "unrecognized arguments"),
        ([], "COMMAND"),
    ],
)
def test_bad_arguments_exit_2_with_a_clear_message(argv, message, capsys):
    with pytest.raises(SystemExit) as done:
        cli.main(argv)
    assert done.value.code == 2
    assert message in capsys.readouterr().err


def test_offline_dataset_error_is_reported_not_raised(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("RESTRAINED_DATA_DIR", str(tmp_path))
    status = cli.main(
        ["run", "sensitivity", "--profile", "gpu", "--no-download", "--out", str(tmp_path)]
    )
    assert status == 2
    err = capsys.readouterr().err
    assert "cifar-10-binary.tar.gz" in err and "download" in err


def test_specs_exist_for_every_experiment_and_profile():
    for experiment in experiments.EXPERIMENTS:
        for profile in experiments.PROFILES:
            s = experiments.spec(experiment, profile)
            assert s.train.epochs >= 1 and s.seeds
    paper = experiments.spec("sensitivity", "paper")
    assert (paper.model, paper.dataset, paper.train.epochs) == ("resnet56", "cifar10", 200)
    assert len(paper.seeds) * len(paper.ks) == 36
    with pytest.raises(ValueError, match="experiment"):
        experiments.spec("table1", "ci")


def test_finite_json_replaces_nan_and_inf():
    assert provenance.finite_json({"a": [1.0, float("nan")], "b": float("inf")}) == {
        "a": [1.0, None],
        "b": None,
    }


@pytest.mark.slow
def test_end_to_end_writes_json_with_provenance(tmp_path):
    done = run_cli(
        "run", "sensitivity", "--profile", "ci", "--epochs", "1", "--seeds", "2",
        "--no-progress", "--out", str(tmp_path),
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    record = json.loads((tmp_path / "sensitivity" / "ci.json").read_text())
    assert record["experiment"] == "sensitivity" and record["profile"] == "ci"
    table = record["metrics"]["table1"]
    assert len(table["final_test_accuracy"]) == 2 and len(table["ks"]) == 6
    prov = record["provenance"]
    assert prov["command"].startswith("python -m restrained run sensitivity")
    assert prov["packages"]["jax"] and prov["device"]["backend"] == "cpu"
    assert prov["wall_time_s"] > 0 and "commit" in prov["git"]


def test_save_record_writes_strict_json_with_provenance(tmp_path):
    path = tmp_path / "sub" / "r.json"
    provenance.save_record({"x": float("nan")}, path, wall_time_s=1.234, argv=["prog", "--a"])
    saved = json.loads(path.read_text())
    assert saved["x"] is None
    assert saved["provenance"]["command"] == "prog --a"
    assert saved["provenance"]["wall_time_s"] == 1.23
    assert set(saved["provenance"]) >= {"git", "packages", "device", "utc"}
