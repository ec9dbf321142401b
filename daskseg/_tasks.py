"""Many block tasks on a cluster: one small graph per block, a bounded window in flight.

The writer (blocks of a mask -> encoded frames) and the reader's ``to_zarr`` (blocks of a SEG ->
Zarr regions) both run one task per block of a Dask array. Submitting the whole graph at once
would let results pile up faster than the client consumes them; submitting block by block with
the whole graph attached would resend it every time. So each block gets only its own, culled,
part of the optimized graph, and at most a few tasks per worker thread are on the cluster.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterator, Sequence
from typing import Any

import dask.array as da
import numpy as np
from dask.core import flatten
from dask.delayed import Delayed
from dask.optimization import cull
from distributed import as_completed

__all__ = ["block_tasks", "run_windowed"]


def block_tasks(array: da.Array) -> np.ndarray:
    """One Delayed per block of ``array``, each carrying only the graph that block needs.

    The graph is optimized once for all blocks (so that, for example, a block's read fuses with
    the function applied to it), then culled per block.
    """
    keys = list(flatten(array.__dask_keys__()))
    graph = dict(array.__dask_optimize__(array.__dask_graph__(), keys))
    tasks = np.empty(array.numblocks, dtype=object)
    for key in keys:
        tasks[key[1:]] = Delayed(key, cull(graph, [key])[0])
    return tasks


def run_windowed(client: Any, tasks: Sequence[Delayed]) -> Iterator[tuple[int, Any]]:
    """Compute ``tasks`` on the cluster; yield ``(index, result)`` as each finishes.

    At most four tasks per worker thread are in flight, refilled in groups (each compute call
    costs a graph submission) early enough that every worker has a task queued behind the one it
    runs. A task's result is released on the cluster once yielded. On any error, or if the
    caller stops early, the tasks still in flight are cancelled.
    """
    threads = max(1, sum(client.nthreads().values()))
    window = max(8, 4 * threads)
    index_of: dict[str, int] = {}
    position = 0

    def submit(count: int) -> list[Any]:
        nonlocal position
        batch = list(tasks[position : position + count])
        if not batch:
            return []
        with warnings.catch_warnings():
            # Blocks of an in-memory mask carry their pixels in the graph, as they must.
            warnings.filterwarnings("ignore", message="Sending large graph")
            futures = client.compute(batch)
        for offset, future in enumerate(futures):
            index_of[future.key] = position + offset
        position += len(batch)
        return futures

    first = submit(window)
    queue = as_completed(first, loop=client.loop)
    in_flight = len(first)
    try:
        for future in queue:
            in_flight -= 1
            result = future.result()
            future.release()
            yield index_of.pop(future.key), result
            if in_flight <= window - threads:
                more = submit(window - in_flight)
                in_flight += len(more)
                queue.update(more)
    finally:
        for future in list(queue.futures):
            future.cancel()
