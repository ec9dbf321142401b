"""Block tasks: each block's own culled graph, and the bounded window on a cluster."""

from __future__ import annotations

import dask
import dask.array as da
import numpy as np
import pytest

from _gathers import count_gathers
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


def _plus_one_from_zarr(path, shape, store_chunks, block_chunks):
    """Values in a Zarr store, and the Dask array of its blocks of ``block_chunks``, plus one."""
    import zarr

    values = np.arange(np.prod(shape), dtype=np.uint16).reshape(shape)
    store = zarr.create_array(str(path), shape=shape, chunks=store_chunks, dtype=values.dtype)
    store[:] = values
    return values, da.from_zarr(store).rechunk(block_chunks).map_blocks(np.add, 1)


def _each_block_equals(client, tasks, array, values):
    """Run the block tasks on the cluster; each result must be its region of ``values`` + 1."""
    results = dict(run_windowed(client, tasks.ravel().tolist(), "read blocks"))
    starts = [np.cumsum((0,) + chunks[:-1]) for chunks in array.chunks]
    for number, index in enumerate(np.ndindex(tasks.shape)):
        region = tuple(slice(starts[k][i], starts[k][i] + array.chunks[k][i])
                       for k, i in enumerate(index))
        np.testing.assert_array_equal(results[number], values[region] + 1)


def test_a_block_of_several_zarr_chunks_is_one_task_read_on_a_worker(tmp_path, dask_client):
    # Blocks of 4 x 3 of the store's chunks, then a function of each block.
    values, array = _plus_one_from_zarr(tmp_path / "m.zarr", (64, 48), (8, 8), (32, 24))
    tasks = block_tasks(array)
    assert tasks.shape == (2, 2)
    for index in np.ndindex(tasks.shape):
        # Reads, merge and function: one task, the Zarr array inside it.
        assert len(tasks[index].dask) == 1
    _each_block_equals(dask_client, tasks, array, values)


def test_an_input_chunk_cut_across_blocks_stays_one_shared_task(tmp_path, dask_client):
    # Blocks of 20 rows: the store's second chunk (rows 30-59) feeds two blocks.
    values, array = _plus_one_from_zarr(tmp_path / "m.zarr", (60, 40), (30, 40), (20, 40))
    tasks = block_tasks(array)
    reads = [{name for name in tasks[index].dask if "from-zarr" in str(name)}
             for index in np.ndindex(tasks.shape)]
    assert reads[1] & reads[2]  # the shared chunk read is one key, in both blocks' graphs
    _each_block_equals(dask_client, tasks, array, values)


def _add_weights(block, weights):
    return block + weights.sum()


def test_a_numpy_array_every_block_reads_stays_one_shared_key(dask_client):
    values = np.arange(64 * 64, dtype=np.int64).reshape(64, 64)
    weights = np.arange(1000, dtype=np.int64)  # an argument of every block, as one key
    array = da.from_array(values, chunks=8).rechunk(32).map_blocks(
        _add_weights, dask.delayed(weights, name="weights"), dtype=np.int64)
    tasks = block_tasks(array)
    shared = [{name for name, node in tasks[index].dask.items()
               if isinstance(getattr(node, "value", None), np.ndarray)}
              for index in np.ndindex(tasks.shape)]
    assert len(set.intersection(*shared)) == 1  # the weights, outside each block's one task
    results = dict(run_windowed(dask_client, tasks.ravel().tolist(), "add weights"))
    for number, index in enumerate(np.ndindex(tasks.shape)):
        region = values[32 * index[0] : 32 * index[0] + 32, 32 * index[1] : 32 * index[1] + 32]
        np.testing.assert_array_equal(results[number], region + weights.sum())


def test_run_windowed_yields_every_result_once(thread_client):
    tasks = [dask.delayed(pow)(k, 2) for k in range(30)]
    results = dict(run_windowed(thread_client, tasks, "square numbers"))
    assert results == {k: k * k for k in range(30)}


def test_a_task_error_reaches_the_caller_as_it_is(thread_client):
    def fail(k):
        raise KeyError(k)

    with pytest.raises(KeyError):
        list(run_windowed(thread_client, [dask.delayed(fail)(1)], "fail"))


@pytest.mark.parametrize("few_gathers", [False, True])
def test_finished_tasks_are_gathered_a_few_at_a_time(thread_client, monkeypatch, few_gathers):
    """By default one gather per worker thread's result; with ``few_gathers`` (the writer's:
    each gather is a round trip that costs the client's CPU) up to 8 at a time, while a run
    makes about eight gathers or more (here 32 tasks: 4 at a time)."""
    import time

    gathers = count_gathers(monkeypatch, thread_client)
    tasks = [dask.delayed(lambda k: time.sleep(0.01) or k)(k) for k in range(32)]
    results = dict(run_windowed(thread_client, tasks, "sleep", few_gathers=few_gathers))
    assert results == {k: k for k in range(32)}
    assert sum(gathers) == 32
    if few_gathers:
        assert len(gathers) <= 9 and all(size >= 4 for size in gathers[:-1]), gathers
    else:
        assert len(gathers) > 9  # two threads finish about two at a time


def _total(block):
    from daskseg._pack import unpacked

    return int(unpacked(block).sum())


def test_small_packed_inputs_go_inside_their_tasks_and_large_ones_are_scattered(
    dask_client, monkeypatch
):
    from daskseg._pack import PackedBlock, pack_block
    from daskseg._tasks import DataTask

    labels = np.zeros((64, 512, 512), np.uint8)  # 16 MB that packs to a few KB
    labels[:, 100:200, 50:400] = 3
    noise = np.random.default_rng(0).integers(0, 255, (2, 512, 512), dtype=np.uint8)
    scattered: list = []
    scatter = dask_client.scatter

    def counted_scatter(data, **options):
        scattered.extend(data)
        return scatter(data, **options)

    monkeypatch.setattr(dask_client, "scatter", counted_scatter)
    tasks = [DataTask(block, dask.delayed(_total), pack_block) for block in (labels, noise)]
    results = dict(run_windowed(dask_client, tasks, "sum blocks"))
    assert results == {0: int(labels.sum()), 1: int(noise.sum())}
    # The noise does not pack (512 KB as it is): only it was scattered.
    assert len(scattered) == 1 and not isinstance(scattered[0], PackedBlock)
    np.testing.assert_array_equal(scattered[0], noise)


def test_small_inputs_go_inside_their_tasks_up_to_an_allowance_a_submission():
    from daskseg._pack import PackedBlock
    from daskseg._tasks import _INLINE_MAX_BYTES, _INLINE_MAX_SUBMISSION_BYTES, _to_scatter

    small = PackedBlock(b"x" * _INLINE_MAX_BYTES, "|u1", (_INLINE_MAX_BYTES,))
    large = PackedBlock(b"x" * (_INLINE_MAX_BYTES + 1), "|u1", (_INLINE_MAX_BYTES + 1,))
    fit = _INLINE_MAX_SUBMISSION_BYTES // _INLINE_MAX_BYTES
    packed = {0: large, 1: np.zeros(8), **{i: small for i in range(2, fit + 2)}, 99: [1, 2]}
    # The large one, what is not an array, and the last small one, which the 64 bytes of zeros
    # put past the allowance, are scattered.
    assert _to_scatter(packed) == [0, fit + 1, 99]


def test_then_runs_on_each_block_where_it_is_computed():
    from daskseg._pack import PackedBlock, pack_block

    values = np.zeros((512, 384), np.uint16)
    values[100:300, 50:200] = 7
    array = da.from_array(values, chunks=(256, 192)) + 1
    tasks = block_tasks(array, then=pack_block)
    for index in np.ndindex(tasks.shape):
        (packed,) = dask.compute(tasks[index], scheduler="synchronous")
        assert isinstance(packed, PackedBlock) and len(packed.data) < 2000
        np.testing.assert_array_equal(packed.unpack(), array.blocks[index].compute())


def test_an_interrupt_as_the_watchdog_starts_leaves_nothing_running(thread_client, monkeypatch):
    """A KeyboardInterrupt comes where Python waits, as in Thread.start: landing there, before
    the try whose finally cancels what is in flight, it left the tasks on the cluster, their
    results on the workers and the watchdog thread running (to_zarr's tasks then wrote after
    its cleanup)."""
    import gc
    import threading
    import time

    start = threading.Thread.start

    def interrupted_start(thread):
        start(thread)
        if thread.name == "daskseg-watchdog":
            raise KeyboardInterrupt

    slow = dask.delayed(lambda x: time.sleep(0.2) or x * x, pure=False)
    monkeypatch.setattr(threading.Thread, "start", interrupted_start)
    with pytest.raises(KeyboardInterrupt):
        dict(run_windowed(thread_client, [slow(k) for k in range(6)], "square numbers"))
    monkeypatch.undo()
    gc.collect()

    def on_the_cluster() -> int:
        return thread_client.run_on_scheduler(lambda dask_scheduler: len(dask_scheduler.tasks))

    deadline = time.monotonic() + 10  # released a moment after the client lets go
    while time.monotonic() < deadline and (
        thread_client.futures or on_the_cluster()
        or any(t.name == "daskseg-watchdog" for t in threading.enumerate())
    ):
        time.sleep(0.1)
    assert not thread_client.futures
    assert not any(t.name == "daskseg-watchdog" for t in threading.enumerate())
    assert on_the_cluster() == 0


def test_an_interrupted_run_leaves_a_client_that_gathers_again():
    """distributed leaves a gather that an interrupt cancelled before it was sent as the one
    that later gathers wait on, and every later gather of the client failed (a notebook's
    client was useless after a Ctrl-C of a write). An interrupted run mends it."""
    import asyncio

    from distributed import Client

    with Client(processes=False, n_workers=1, threads_per_worker=1, dashboard_address=None,
                set_as_default=False) as client:

        async def as_an_interrupt_leaves_it() -> None:
            pending = asyncio.ensure_future(asyncio.sleep(30))
            pending.cancel()
            with pytest.raises(asyncio.CancelledError):
                await pending
            client._gather_future, client._gather_keys = pending, {"lost"}

        client.sync(as_an_interrupt_leaves_it)

        def interrupt() -> None:
            raise KeyboardInterrupt

        square = dask.delayed(lambda x: x * x, pure=False)
        with pytest.raises(KeyboardInterrupt):
            dict(run_windowed(client, [square(k) for k in range(4)], "square numbers",
                              check=interrupt))
        assert dict(run_windowed(client, [square(k) for k in range(4)], "square numbers")) \
            == {0: 0, 1: 1, 2: 4, 3: 9}
        assert client.gather(client.submit(lambda: 7, pure=False)) == 7


def test_a_failed_local_compute_returns_once_its_other_tasks_ended(tmp_path):
    """Dask's threads raise the first task's error while the others run on: to_zarr without a
    client removed its partial store, and tasks still writing made it again (left behind in 4
    of 5 reads of a damaged SEG)."""
    import time

    from daskseg._tasks import compute_settled

    def fail() -> None:
        raise ValueError("a damaged frame")

    def write_late(name: str) -> None:
        time.sleep(0.5)
        (tmp_path / name).write_text("written")

    tasks = [dask.delayed(fail, pure=False)()] + [
        dask.delayed(write_late, pure=False)(f"block-{k}") for k in range(3)]
    with dask.config.set(scheduler="threads", num_workers=4):
        with pytest.raises(ValueError, match="a damaged frame"):
            compute_settled(*tasks)
        assert sorted(path.name for path in tmp_path.iterdir()) == [
            "block-0", "block-1", "block-2"]
        assert compute_settled(dask.delayed(len)("abc")) == (3,)
