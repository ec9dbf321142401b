"""Block tasks: each block's own culled graph, and the bounded window on a cluster."""

from __future__ import annotations

import dask
import dask.array as da
import numpy as np
import pytest

from daskseg._tasks import block_tasks, run_windowed


def test_each_block_task_carries_only_its_own_graph():
    array = da.arange(20 * 20).reshape(20, 20).rechunk(7) + 1  # ragged 7 x 7 chunks
    tasks = block_tasks(array)
    assert tasks.shape == array.numblocks == (3, 3)
    whole = len(dict(array.__dask_optimize__(array.__dask_graph__(), array.__dask_keys__())))
    for index in np.ndindex(tasks.shape):
        graph = dict(tasks[index].dask)
        assert len(graph) < whole
        (value,) = dask.compute(tasks[index], scheduler="synchronous")
        np.testing.assert_array_equal(value, array.blocks[index].compute(scheduler="synchronous"))


def test_run_windowed_yields_every_result_once(thread_client):
    tasks = [dask.delayed(pow)(k, 2) for k in range(30)]
    results = dict(run_windowed(thread_client, tasks, "square numbers"))
    assert results == {k: k * k for k in range(30)}


def test_a_task_error_reaches_the_caller_as_it_is(thread_client):
    def fail(k):
        raise KeyError(k)

    with pytest.raises(KeyError):
        list(run_windowed(thread_client, [dask.delayed(fail)(1)], "fail"))
