"""Rounding environments: flags, the bit probe, and the collection of ≈ values."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from restrained import portability
from restrained.provenance import ISA_FLAGS, cpu_info, device_info


def test_flags_replace_an_inherited_isa_and_keep_the_rest():
    base = "--xla_gpu_deterministic_ops=true --xla_cpu_max_isa=AVX"
    assert portability.xla_flags("native", base) == "--xla_gpu_deterministic_ops=true"
    assert portability.xla_flags("sse4_2", base) == (
        "--xla_gpu_deterministic_ops=true --xla_cpu_max_isa=SSE4_2"
    )
    assert portability.xla_flags("avx", "") == "--xla_cpu_max_isa=AVX"


def test_unknown_environment_is_named_in_the_error():
    with pytest.raises(ValueError, match="environment must be one of"):
        portability.xla_flags("avx3")


def test_fast_math_is_not_an_alternative_cpu():
    assert "fastmath" in portability.ENVIRONMENTS
    assert "fastmath" not in portability.ALTERNATIVES
    assert set(portability.ALTERNATIVES) <= set(portability.ENVIRONMENTS)


def test_probe_is_deterministic_within_one_environment():
    first, second = portability.probe(), portability.probe()
    assert first == second
    assert set(first) >= {"matmul", "conv", "matvec", "sum", "tanh", "tanh_network_gradient"}


def test_check_keeps_one_of_each_group_of_identical_environments():
    same = {"matmul": "a", "sum": "b"}
    other = {"matmul": "c", "sum": "b"}
    result = portability.Check({"native": same, "avx": other, "sse4_2": dict(other)})
    assert result.differs_from_native("avx") and result.differs_from_native("sse4_2")
    assert result.distinct(["avx", "sse4_2"]) == ["avx"]
    assert portability.Check({"native": same, "avx": dict(same)}).distinct(["avx"]) == []
    lines = result.report().splitlines()
    assert lines[2].split()[-1] == "-" and lines[3].split()[-1] == "avx"


def test_marked_values_are_parsed_per_line():
    text = "a ≈1.5e-03 and ≈-2 b\nno value here 3.5\n≈12.5% of it"
    assert portability.marked_values(text) == [
        ("a ≈… and ≈… b", [1.5e-3, -2.0]),
        ("≈… of it", [0.125]),
    ]


def test_cpu_info_names_model_and_isa_and_provenance_carries_it():
    cpu = cpu_info()
    assert set(cpu) == {"model", "machine", "isa"}
    assert set(cpu["isa"]) <= set(ISA_FLAGS)
    device = device_info()
    assert device["cpu"] == cpu and "xla_flags" in device


def test_run_in_reports_a_failing_child():
    with pytest.raises(RuntimeError, match="native"):
        portability.run_in("native", ["no-such-command"], timeout=120)


def test_a_probe_in_a_child_process_with_this_environment_matches_this_process():
    child = subprocess.run(
        [sys.executable, "-m", "restrained.portability", "probe"],
        env=os.environ,
        capture_output=True,
        text=True,
        check=True,
        timeout=300,
    )
    assert json.loads(child.stdout) == portability.probe()
