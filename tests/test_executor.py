"""DaskExecutor against the generic executor contract of concurrent.futures (Python 3.11).

Most tests run on the session's LocalCluster of worker processes, so every call and result is
pickled as in real use; a few run on threads. Task functions live at module level so workers can
import them.
"""

from __future__ import annotations

import concurrent.futures as cf
import os
import time
import weakref

import highdicom as hd
import numpy as np
import pytest
from distributed import Client

from daskseg import ClusterError, DaskExecutor
from daskseg.synthetic import make_segment_descriptions, make_slide, make_tissue_mask


def square(x):
    return x * x


def echo(*args, **kwargs):
    return args, kwargs


def fail_on(x, bad):
    if x == bad:
        raise ZeroDivisionError(f"bad value {x}")
    return x


def sleep_then(x, seconds):
    time.sleep(seconds)
    return x


def random_token(_):
    return os.urandom(8)


def pid(_=None):
    return os.getpid()


class Big:
    """A result whose lifetime a weak reference can watch."""

    def __init__(self, value):
        self.value = value


def make_big(value):
    return Big(value)


@pytest.fixture(scope="module")
def executor(dask_client):
    with DaskExecutor(dask_client) as executor:
        yield executor


def test_submit_returns_stdlib_future_with_result(executor):
    future = executor.submit(square, 7)
    assert isinstance(future, cf.Future)
    assert future.result(timeout=30) == 49


def test_keywords_of_client_submit_reach_the_function(executor):
    kwargs = dict(key="k", workers=["w"], retries=3, priority=5, pure=True, resources={"GPU": 1},
                  fn="not the function")
    args, got = executor.submit(echo, 1, 2, **kwargs).result(timeout=30)
    assert args == (1, 2)
    assert got == kwargs


def test_fn_is_positional_only(executor):
    with pytest.raises(TypeError):
        executor.submit(fn=square)


def test_exception_keeps_its_type_and_spares_its_batch(executor):
    futures = [executor.submit(fail_on, i, 5) for i in range(20)]
    cf.wait(futures, timeout=60)
    with pytest.raises(ZeroDivisionError, match="bad value 5"):
        futures[5].result()
    assert [f.result() for i, f in enumerate(futures) if i != 5] == [i for i in range(20) if i != 5]


def test_identical_calls_are_not_merged(executor):
    tokens = [f.result(timeout=30) for f in [executor.submit(random_token, 0) for _ in range(10)]]
    assert len(set(tokens)) == 10


def test_map_is_ordered_and_raises_at_position(executor):
    assert list(executor.map(square, range(100))) == [i * i for i in range(100)]
    results = executor.map(fail_on, range(10), [3] * 10)
    assert [next(results) for _ in range(3)] == [0, 1, 2]
    with pytest.raises(ZeroDivisionError):
        next(results)


@pytest.mark.parametrize("chunksize", [1, 3, 50])
def test_map_chunksize(executor, chunksize):
    assert list(executor.map(square, range(37), chunksize=chunksize)) == [i * i for i in range(37)]
    with pytest.raises(ValueError):
        executor.map(square, range(3), chunksize=0)


def test_map_times_out(executor):
    with pytest.raises(TimeoutError):
        list(executor.map(sleep_then, [1, 2], [3, 3], timeout=0.5))


def test_map_does_not_keep_yielded_results(executor):
    results = executor.map(make_big, range(5))
    first = next(results)
    reference = weakref.ref(first)
    del first
    # The callback thread that handed the result over may still be returning: give it a moment.
    deadline = time.monotonic() + 5
    while reference() is not None and time.monotonic() < deadline:
        time.sleep(0.01)
    assert reference() is None
    assert [b.value for b in results] == [1, 2, 3, 4]


def test_mixes_with_other_executors(executor):
    with cf.ThreadPoolExecutor(2) as threads:
        futures = [executor.submit(square, 3), threads.submit(square, 4)]
        done, not_done = cf.wait(futures, timeout=30)
        assert not not_done
        assert sorted(f.result() for f in cf.as_completed(futures, timeout=30)) == [9, 16]


def test_calls_run_in_worker_processes(executor, dask_client):
    pids = {f.result(timeout=30) for f in [executor.submit(pid) for _ in range(50)]}
    assert os.getpid() not in pids
    assert pids <= set(dask_client.run(os.getpid).values())


def test_results_are_released_on_the_cluster(executor, dask_client):
    futures = [executor.submit(square, i) for i in range(200)]
    assert [f.result(timeout=60) for f in futures] == [i * i for i in range(200)]
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        keys = dask_client.run_on_scheduler(
            lambda dask_scheduler: [k for k in dask_scheduler.tasks if "daskexecutor" in str(k)]
        )
        if not keys:
            break
        time.sleep(0.1)
    assert keys == []


def test_cancel_a_queued_call(dask_client):
    executor = DaskExecutor(dask_client, batches_per_thread=1, batch_size=1)
    try:
        blockers = [executor.submit(sleep_then, i, 1.0) for i in range(2)]
        queued = executor.submit(square, 3)
        assert queued.cancel()
        assert queued.cancelled()
        assert [b.result(timeout=30) for b in blockers] == [0, 1]
        with pytest.raises(cf.CancelledError):
            queued.result()
    finally:
        executor.shutdown()


def test_shutdown_semantics(dask_client):
    executor = DaskExecutor(dask_client, batches_per_thread=1, batch_size=1)
    running = [executor.submit(sleep_then, i, 0.5) for i in range(2)]
    deadline = time.monotonic() + 10
    while not all(f.running() for f in running) and time.monotonic() < deadline:
        time.sleep(0.01)  # both sent to the cluster: no longer cancellable
    queued = [executor.submit(square, i) for i in range(5)]
    executor.shutdown(wait=True, cancel_futures=True)
    assert [f.result() for f in running] == [0, 1]  # sent work completes
    assert all(f.cancelled() for f in queued)
    with pytest.raises(RuntimeError, match="after shutdown"):
        executor.submit(square, 2)
    assert dask_client.status == "running"  # a client it did not create stays open

    executor = DaskExecutor(dask_client)
    futures = [executor.submit(square, i) for i in range(10)]
    executor.shutdown(wait=False)
    assert [f.result(timeout=30) for f in futures] == [i * i for i in range(10)]


def test_context_manager_waits(dask_client):
    with DaskExecutor(dask_client) as executor:
        futures = [executor.submit(sleep_then, i, 0.1) for i in range(4)]
    assert all(f.done() for f in futures)


def test_owns_the_cluster_it_starts():
    executor = DaskExecutor(n_workers=1, processes=False, dashboard_address="127.0.0.1:0")
    client = executor.client
    assert executor.submit(square, 5).result(timeout=60) == 25
    executor.shutdown()
    assert client.status == "closed"


def test_uses_the_current_client_and_an_address():
    with Client(processes=False, n_workers=1, dashboard_address="127.0.0.1:0") as client:
        with DaskExecutor() as executor:
            assert executor.client is client
            assert executor.submit(square, 6).result(timeout=30) == 36
        assert client.status == "running"
        address = client.scheduler.address
        executor = DaskExecutor(address=address)
        assert executor.client is not client
        assert executor.submit(square, 2).result(timeout=30) == 4
        executor.shutdown()
        assert executor.client.status == "closed"
        assert client.status == "running"


def test_thread_workers_too():
    with Client(processes=False, n_workers=1, threads_per_worker=2,
                dashboard_address="127.0.0.1:0") as client:
        with DaskExecutor(client) as executor:
            assert list(executor.map(square, range(20), chunksize=4)) == [i * i for i in range(20)]


def test_cluster_loss_fails_futures_instead_of_hanging():
    client = Client(processes=False, n_workers=1, dashboard_address="127.0.0.1:0")
    executor = DaskExecutor(client, batch_size=1, batches_per_thread=1)
    future = executor.submit(sleep_then, 1, 5.0)
    time.sleep(0.5)
    client.cluster.close()
    client.close()
    with pytest.raises(ClusterError):
        future.result(timeout=60)
    executor.shutdown(wait=False)


@pytest.mark.parametrize("organization", ["TILED_FULL", "TILED_SPARSE"])
def test_highdicom_pixel_data_is_byte_identical(executor, organization):
    rows = columns = 1024
    source = make_slide(rows, columns, tile_size=(256, 256))
    labels = make_tissue_mask(rows, columns, 3).compute()
    descriptions = make_segment_descriptions(3)

    def build(workers):
        return hd.seg.Segmentation(
            [source], labels[None], "BINARY", descriptions, hd.UID(), 1, hd.UID(), 1,
            "m", "m", "1", "1", transfer_syntax_uid="1.2.840.10008.1.2.4.90",
            tile_pixel_array=True, dimension_organization_type=organization,
            omit_empty_frames=organization == "TILED_SPARSE", workers=workers,
        )

    serial = build(0).PixelData
    # One executor serves many constructions.
    assert build(executor).PixelData == serial
    assert build(executor).PixelData == serial
    assert np.frombuffer(serial, np.uint8).size > 0
