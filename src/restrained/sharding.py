"""Spread an ensemble's member axis over all devices, on one host or many.

Every array whose leading axis indexes ensemble members is split along that axis over a
one-dimensional device mesh (axis name ``"members"``); everything else (the data, the
step counter) is replicated. Each member's arithmetic is then the same program on the
same numbers wherever it runs, so results do not depend on the number of devices.
With several processes, :func:`maybe_initialize_distributed` calls
``jax.distributed.initialize()`` first and the mesh spans every process's devices.
"""

from __future__ import annotations

import os
from typing import Any

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

AXIS = "members"


def maybe_initialize_distributed() -> bool:
    """Join a multi-host run when the environment describes one; return whether it did.

    ``jax.distributed.initialize()`` reads the coordinator address, the number of
    processes and this process's index from ``JAX_COORDINATOR_ADDRESS``,
    ``JAX_NUM_PROCESSES``, ``JAX_PROCESS_ID`` (or from a cluster scheduler it recognises).
    """
    if not os.environ.get("JAX_COORDINATOR_ADDRESS"):
        return False
    jax.distributed.initialize()
    return True


def member_mesh(n_members: int, devices: list | None = None) -> Mesh:
    """A 1-D mesh over the largest number of devices that divides ``n_members``."""
    if n_members < 1:
        raise ValueError(f"n_members must be >= 1, got {n_members}")
    devices = list(jax.devices() if devices is None else devices)
    count = max(d for d in range(1, len(devices) + 1) if n_members % d == 0)
    return Mesh(np.asarray(devices[:count]), (AXIS,))


def member_sharding(mesh: Mesh) -> NamedSharding:
    """Split the leading (member) axis over the mesh."""
    return NamedSharding(mesh, PartitionSpec(AXIS))


def replicated(mesh: Mesh) -> NamedSharding:
    """A full copy on every device of the mesh."""
    return NamedSharding(mesh, PartitionSpec())


def put(tree: Any, sharding: NamedSharding) -> Any:
    """Place host arrays (NumPy or JAX) as global arrays with ``sharding``; multi-host safe."""

    def one(a: Any) -> jax.Array:
        a = np.asarray(a)
        return jax.make_array_from_callback(a.shape, sharding, lambda idx: a[idx])

    return jax.tree_util.tree_map(one, tree)


def fetch(tree: Any) -> Any:
    """Bring (possibly multi-host) global arrays back as NumPy arrays on every process."""
    if jax.process_count() > 1:
        from jax.experimental import multihost_utils

        return jax.tree_util.tree_map(
            np.asarray, multihost_utils.process_allgather(tree, tiled=True)
        )
    return jax.tree_util.tree_map(np.asarray, tree)
