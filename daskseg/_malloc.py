"""Cheap codec allocations on every worker, whoever started the cluster.

distributed's nannies start workers with ``MALLOC_TRIM_THRESHOLD_=65536``. glibc reads it once,
at start, and then keeps its mmap threshold fixed at 128 KiB: every frame buffer of a codec (a
512 x 512 frame's wavelet planes are megabytes) is mmapped and unmapped afresh, page faults and
all, and the heap top is handed back to the kernel after nearly every task. JPEG 2000 encoding
runs about 1.2x slower for it on these machines (benchmarks/malloc.py). ``mallopt`` changes
both settings inside a running process, so daskseg sets them on each worker whose environment
froze them (a worker started without such a variable keeps glibc's dynamic thresholds, which
measured faster still) through a plugin that it registers when it resolves a client
(:func:`daskseg._client.cluster_client`, :class:`daskseg.DaskExecutor`). Off glibc it does
nothing.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import threading
import weakref
from typing import Any

from distributed import Client, WorkerPlugin

__all__ = [
    "MALLOC_SETTINGS",
    "MallocPlugin",
    "malloc_settings",
    "register_malloc_plugin",
    "register_on_current_client",
]

# glibc's malloc.h: mallopt parameters.
_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3

#: Bytes: blocks up to 32 MiB (glibc's largest mmap threshold on 64-bit) come from the heap, so
#: codec buffers are reused; the heap top is returned to the kernel once 64 MiB of it is free,
#: which bounds what a worker holds beyond its live data. Measured on a detailed 512 x 512 label
#: frame, JPEG 2000, one process: 3.1 ms with the nanny's variable, 2.6 ms with these settings or
#: without the variable; a 4 MiB threshold did not help.
MALLOC_SETTINGS = {"mmap_threshold": 32 * 2**20, "trim_threshold": 64 * 2**20}

_applied: dict[str, int] = {}  # in a worker: what the plugin set (read by malloc_settings)


def _set_malloc(mmap_threshold: int, trim_threshold: int) -> dict[str, int]:
    """Set glibc's thresholds in this process; the settings that took, empty off glibc."""
    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name)
        mallopt = libc.mallopt
    except (OSError, AttributeError, TypeError):  # not glibc (musl, macOS, Windows)
        return {}
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    applied = {}
    # mallopt returns 1 on success. Setting M_MMAP_THRESHOLD also fixes it (no dynamic
    # threshold), as the environment variable did, but at a size that codec buffers fit under.
    if mallopt(_M_MMAP_THRESHOLD, mmap_threshold) == 1:
        applied["mmap_threshold"] = mmap_threshold
    if mallopt(_M_TRIM_THRESHOLD, trim_threshold) == 1:
        applied["trim_threshold"] = trim_threshold
    return applied


# Any of these, set in the environment, turns off glibc's dynamic mmap and trim thresholds
# (glibc's malloc/arena.c; GLIBC_TUNABLES' glibc.malloc.* the same).
_FREEZING_VARIABLES = ("MALLOC_TRIM_THRESHOLD_", "MALLOC_MMAP_THRESHOLD_", "MALLOC_TOP_PAD_",
                       "MALLOC_MMAP_MAX_")


def _thresholds_frozen() -> bool:
    """Whether this process started with glibc's malloc thresholds fixed by its environment."""
    tunables = os.environ.get("GLIBC_TUNABLES", "")
    return any(name in os.environ for name in _FREEZING_VARIABLES) or "glibc.malloc." in tunables


class MallocPlugin(WorkerPlugin):
    """Sets glibc's mmap and trim thresholds in each worker as it joins (or at once)."""

    name = "daskseg-malloc"
    idempotent = True  # registered again by name: the scheduler keeps the first

    def __init__(self, mmap_threshold: int, trim_threshold: int) -> None:
        self.mmap_threshold = mmap_threshold
        self.trim_threshold = trim_threshold
        self.client_pid = os.getpid()

    def setup(self, worker: Any) -> None:
        if os.getpid() == self.client_pid:  # an in-process worker: leave the user's process be
            return
        if not _thresholds_frozen():  # glibc's dynamic thresholds measured best: keep them
            return
        _applied.clear()
        _applied.update(_set_malloc(self.mmap_threshold, self.trim_threshold))


def malloc_settings() -> dict[str, int]:
    """What the plugin set in this process (run it on a worker with ``client.run``)."""
    return dict(_applied)


_registered: weakref.WeakSet[Client] = weakref.WeakSet()
_lock = threading.Lock()


def register_on_current_client() -> None:
    """Register :class:`MallocPlugin` on the current client's cluster, if there is one.

    The readers' lazy arrays are computed by whatever client is current when the user calls
    ``compute()``, never through :func:`daskseg._client.cluster_client`.
    """
    from distributed import default_client

    try:
        client = default_client()
    except ValueError:  # no client: Dask's local scheduler, in this process
        return
    register_malloc_plugin(client)


def register_malloc_plugin(client: Client) -> None:
    """Register :class:`MallocPlugin` on the client's cluster, once per client.

    Turned off with the Dask configuration value ``daskseg.malloc-plugin: false``.
    """
    import dask

    if not dask.config.get("daskseg.malloc-plugin", True) or client.asynchronous:
        return
    with _lock:
        if client in _registered:
            return
        try:
            client.register_plugin(MallocPlugin(**MALLOC_SETTINGS))
        except Exception:  # noqa: BLE001 - speed only: a dead cluster is reported by the work
            return
        _registered.add(client)
