"""Static checks on the committed notebooks: what nbval cannot see.

The book is built from the outputs stored in the notebooks, so they must be executed, free
of errors, and follow the book's conventions.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

NOTEBOOKS = sorted((Path(__file__).resolve().parents[1] / "notebooks").glob("[0-9][0-9]_*.ipynb"))


def code_cells(path: Path) -> list[dict]:
    cells = json.loads(path.read_text(encoding="utf-8"))["cells"]
    return [c for c in cells if c["cell_type"] == "code" and "".join(c["source"]).strip()]


def test_there_are_notebooks():
    assert NOTEBOOKS, "no notebooks/NN_*.ipynb found"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_notebook_is_executed_without_errors(path):
    cells = code_cells(path)
    assert all(c.get("execution_count") for c in cells), "unexecuted code cells"
    counts = [c["execution_count"] for c in cells]
    assert counts == sorted(counts), "cells were executed out of order"
    assert not [o for c in cells for o in c["outputs"] if o["output_type"] == "error"]


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_notebook_follows_conventions(path):
    cells = code_cells(path)
    sources = ["".join(c["source"]) for c in cells]
    assert "restrained.setup(" in sources[0] or "setup(" in sources[0], (
        "the first code cell must call restrained.setup()"
    )
    assert any("assert " in s for s in sources), "a chapter asserts its quantitative claims"
    for cell, source in zip(cells, sources, strict=True):
        if "lr_wd_figure(" in source and "def " not in source:
            tags = cell.get("metadata", {}).get("tags", [])
            assert "nbval-ignore-output" in tags, "slider cells must be tagged nbval-ignore-output"


CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_no_control_characters_in_sources(path):
    """A lost backslash turns ``\\a`` of ``\\approx`` into BEL: MathJax then fails."""
    cells = json.loads(path.read_text(encoding="utf-8"))["cells"]
    bad = [
        (i, repr(m.group()))
        for i, c in enumerate(cells)
        for m in CONTROL.finditer("".join(c["source"]))
    ]
    assert not bad, f"control characters in cell sources (cell, char): {bad}"


def test_sanitizer_blanks_exactly_the_marked_values():
    """nbval compares every printed value except those marked ≈ (tests/nbval_sanitize.cfg)."""
    from nbval.plugin import get_sanitize_patterns

    from restrained.portability import marked_values

    cfg = Path(__file__).with_name("nbval_sanitize.cfg").read_bytes()
    assert cfg.isascii(), "nbval reads the file in the locale's encoding"
    patterns = get_sanitize_patterns(cfg.decode("ascii"))
    line = "D ≈1.5e-03, ≈10% of ≈8 orders, lr 0.05, 12 of 16, -0.585, ≈-2.5"
    for regex, replace in patterns:
        line = re.sub(regex, replace, line)
    assert line == "D ~VALUE, ~VALUE of ~VALUE orders, lr 0.05, 12 of 16, -0.585, ~VALUE"
    values = marked_values("D ≈1.5e-03, ≈10% of ≈8 orders, lr 0.05, ≈-2.5")
    assert values == [("D ≈…, ≈… of ≈… orders, lr 0.05, ≈…", [1.5e-3, 0.10, 8.0, -2.5])]
