"""Orbax checkpoints of a training state: every array bit for bit, plus JSON metadata.

The state is stored as its flat list of leaves (so any pytree of arrays works, whatever
its node types) with an Orbax ``CheckpointManager``; restoring needs a like-shaped state,
whose shardings the restored arrays take. A checkpoint only becomes the ``latest`` once
Orbax has finished writing it, so a run killed mid-write resumes from the one before.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import jax
import orbax.checkpoint as ocp


class Manager:
    """Save and restore ``(state, metadata)`` pairs under one directory, keyed by step."""

    def __init__(self, directory: Path, max_to_keep: int = 2) -> None:
        if max_to_keep < 1:
            raise ValueError(f"max_to_keep must be >= 1, got {max_to_keep}")
        self.directory = Path(directory).absolute()
        self._manager = ocp.CheckpointManager(
            self.directory,
            options=ocp.CheckpointManagerOptions(max_to_keep=max_to_keep, create=True),
        )

    def latest_step(self) -> int | None:
        """The newest complete checkpoint's step, or ``None``."""
        return self._manager.latest_step()

    def save(self, step: int, state: Any, meta: dict[str, Any]) -> None:
        """Write ``state`` and the JSON-serialisable ``meta`` as step ``step``, and wait."""
        leaves = {str(i): leaf for i, leaf in enumerate(jax.tree_util.tree_leaves(state))}
        self._manager.save(
            step,
            args=ocp.args.Composite(
                state=ocp.args.StandardSave(leaves), meta=ocp.args.JsonSave(meta)
            ),
        )
        self._manager.wait_until_finished()

    def metadata(self, step: int | None = None) -> dict[str, Any]:
        """The JSON metadata of ``step`` (default: the latest), without reading arrays."""
        step = self.latest_step() if step is None else step
        if step is None:
            raise FileNotFoundError(f"no checkpoint in {self.directory}")
        got = self._manager.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))
        return dict(got["meta"])

    def restore(self, like: Any, step: int | None = None) -> tuple[Any, dict[str, Any]]:
        """The state (structured and sharded like ``like``) and metadata of ``step``
        (default: the latest)."""
        step = self.latest_step() if step is None else step
        if step is None:
            raise FileNotFoundError(f"no checkpoint in {self.directory}")
        leaves, treedef = jax.tree_util.tree_flatten(like)
        abstract = {
            str(i): jax.ShapeDtypeStruct(leaf.shape, leaf.dtype, sharding=leaf.sharding)
            for i, leaf in enumerate(leaves)
        }
        got = self._manager.restore(
            step,
            args=ocp.args.Composite(
                state=ocp.args.StandardRestore(abstract), meta=ocp.args.JsonRestore()
            ),
        )
        restored = [got["state"][str(i)] for i in range(len(leaves))]
        return jax.tree_util.tree_unflatten(treedef, restored), dict(got["meta"])

    def close(self) -> None:
        self._manager.close()
