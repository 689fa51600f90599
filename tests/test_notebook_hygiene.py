"""Static checks on the committed notebooks: what nbval cannot see.

The book is built from the outputs stored in the notebooks, so they must be executed, free
of errors, and follow the book's conventions.
"""

from __future__ import annotations

import json
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
