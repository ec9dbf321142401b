"""Which cluster daskseg runs on, and that only what it started is shut down."""

from __future__ import annotations

import pytest
from distributed import Client, LocalCluster

from daskseg import SegmentationTypeError
from daskseg._client import cluster_client, gathers_directly


def test_a_given_client_is_used_and_left_running(thread_client):
    with cluster_client(thread_client) as client:
        assert client is thread_client
    assert thread_client.status == "running"


def test_a_client_of_the_wrong_type_is_refused():
    with pytest.raises(SegmentationTypeError, match="distributed.Client"):
        with cluster_client("tcp://127.0.0.1:8786"):
            pass


def test_without_a_client_and_start_false_none_is_yielded():
    with cluster_client(start=False) as client:
        assert client is None


def test_an_address_gets_a_client_of_its_own_closed_on_exit(thread_client):
    with cluster_client(address=thread_client.scheduler.address) as client:
        assert isinstance(client, Client) and client is not thread_client
        assert client.submit(sum, [1, 2]).result() == 3
    assert client.status == "closed" and thread_client.status == "running"


def test_the_current_client_is_found(thread_client):
    with Client(thread_client.scheduler.address) as current:  # the default client now
        with cluster_client() as client:
            assert client is current
        assert current.status == "running"


def test_a_plain_local_cluster_gets_the_malloc_settings(tmp_path, dask_client):
    """The session cluster is a plain LocalCluster: its nannies set MALLOC_TRIM_THRESHOLD_, and
    after a write daskseg's plugin has set glibc's thresholds in each worker."""
    import os

    from daskseg import write_segmentation
    from daskseg._malloc import MALLOC_SETTINGS, malloc_settings
    from daskseg.synthetic import make_detailed_mask, make_segment_descriptions, make_slide

    assert set(dask_client.run(os.environ.get, "MALLOC_TRIM_THRESHOLD_").values()) == {"65536"}
    write_segmentation(
        make_detailed_mask(128, 128, 2, chunks=64), make_slide(128, 128, tile_size=(64, 64)),
        make_segment_descriptions(2, segmentation_type="LABELMAP"), tmp_path / "seg.dcm",
        segmentation_type="LABELMAP", transfer_syntax_uid="1.2.840.10008.1.2.4.201",
        client=dask_client,
    )
    settings = dask_client.run(malloc_settings)
    assert len(settings) == 2
    assert all(value == MALLOC_SETTINGS for value in settings.values())


def _background_intervals(dask_worker=None) -> dict[str, float]:
    """A worker's periodic work, in ms: its profiler, its memory monitor, its loop's check."""
    return {name: dask_worker.periodic_callbacks[name].callback_time
            for name in ("profile", "memory_monitor", "tick")}


def test_local_cluster_runs_distributed_s_background_less_often_unless_configured():
    """daskseg's own cluster: its workers profile, check their memory and their event loop
    less often than distributed's defaults (10, 100, 20 ms); a value set in the Dask
    configuration is kept."""
    import dask

    from daskseg import local_cluster

    with dask.config.set({"distributed.admin.tick.interval": "30ms"}), \
            local_cluster(1, memory_limit="1GiB", dashboard_address=None) as cluster, \
            Client(cluster) as client:
        [intervals] = client.run(_background_intervals).values()
        assert intervals == {"profile": 50, "memory_monitor": 250, "tick": 30}
        assert cluster.scheduler.periodic_callbacks["monitor"].callback_time == 1000
    with LocalCluster(n_workers=1, memory_limit="1GiB", dashboard_address=None) as plain, \
            Client(plain) as client:  # a user's own cluster is left as distributed makes it
        [intervals] = client.run(_background_intervals).values()
        assert intervals == {"profile": 10, "memory_monitor": 100, "tick": 20}


def test_the_malloc_plugin_leaves_the_users_own_process_alone(thread_client):
    """Workers in the client's process (processes=False) keep the process's malloc settings."""
    from daskseg._malloc import MallocPlugin, malloc_settings

    with cluster_client(thread_client):
        pass
    assert MallocPlugin.name in thread_client.run_on_scheduler(
        lambda dask_scheduler: list(dask_scheduler.worker_plugins))
    assert all(value == {} for value in thread_client.run(malloc_settings).values())


def test_a_read_computed_on_the_current_client_gets_the_malloc_settings(tmp_path, thread_client):
    """The reader's lazy array runs on the user's current client, not through cluster_client:
    making it registers the plugin there, so decoding is as fast on a plain LocalCluster."""

    from daskseg import read_segmentation, write_segmentation
    from daskseg._malloc import MALLOC_SETTINGS, malloc_settings
    from daskseg.synthetic import make_detailed_mask, make_segment_descriptions, make_slide

    mask = make_detailed_mask(128, 128, 2, chunks=64)
    path = write_segmentation(
        mask, make_slide(128, 128, tile_size=(64, 64)),
        make_segment_descriptions(2, segmentation_type="LABELMAP"), tmp_path / "seg.dcm",
        segmentation_type="LABELMAP", client=thread_client,
    )
    with LocalCluster(n_workers=1, threads_per_worker=1, dashboard_address="127.0.0.1:0",
                      memory_limit="1GiB") as cluster, Client(cluster) as client:
        assert list(client.run(malloc_settings).values()) == [{}]  # a new worker, untouched
        labels = read_segmentation(path, combine_segments=True).compute()
        assert list(client.run(malloc_settings).values()) == [MALLOC_SETTINGS]
    assert (labels == mask.compute()).all()


def test_results_come_straight_from_loopback_workers_unless_the_client_says(dask_client):
    # A LocalCluster's workers listen on 127.0.0.1: gathered from them directly...
    assert all(address.startswith("tcp://127.0.0.1:")
               for address in dask_client.scheduler_info()["workers"])
    assert gathers_directly(dask_client)
    # ...unless the client was told otherwise, either way.
    with Client(dask_client.scheduler.address, direct_to_workers=False) as client:
        assert not gathers_directly(client)
    with Client(dask_client.scheduler.address, direct_to_workers=True) as client:
        assert gathers_directly(client)


def test_cancelling_on_a_client_closed_from_another_thread_returns(thread_client):
    """A client of a scheduler address runs its own event loop, stopped by close(): cancelling
    its futures then waited forever (a write whose client another thread closed hung)."""
    import threading
    import time

    from daskseg._client import cancel_quietly, wait_until_stopped

    client = Client(thread_client.scheduler.address, set_as_default=False)
    future = client.submit(time.sleep, 5, pure=False)
    client.close()
    done = threading.Event()

    def give_up():
        cancel_quietly(client, [future])
        wait_until_stopped(client, [future.key])
        done.set()

    threading.Thread(target=give_up, daemon=True).start()
    assert done.wait(15)


@pytest.mark.parametrize("pass_client", [False, True])
def test_a_write_from_inside_tasks_as_many_as_threads_runs(dask_client, tmp_path, pass_client):
    """A pipeline's client.map of one case a task on every worker thread: each task's write
    runs on the worker's client with its thread seceded, not on a cluster of its own (which a
    worker process cannot start) nor waiting for threads that tasks like it hold."""
    import time

    from _in_task import write_case_in_task

    threads = sum(dask_client.nthreads().values())
    futures = dask_client.map(write_case_in_task, [str(tmp_path)] * (threads + 1),
                              range(threads + 1), [pass_client] * (threads + 1), pure=False)
    deadline = time.monotonic() + 120
    while not all(future.done() for future in futures) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert all(future.done() for future in futures), "writes inside tasks did not finish"
    assert dask_client.gather(futures) == [True] * (threads + 1)


def test_a_closed_client_is_a_cluster_error():
    from daskseg import ClusterError

    client = Client(processes=False, n_workers=1, dashboard_address="127.0.0.1:0")
    client.close()
    with pytest.raises(ClusterError, match="cannot reach its scheduler"):
        with cluster_client(client):
            pass


def test_an_asynchronous_client_in_its_own_event_loop_is_refused():
    """Waiting for the work from a coroutine would block the loop the client needs."""
    import asyncio

    async def main() -> None:
        async with Client(processes=False, n_workers=1, dashboard_address="127.0.0.1:0",
                          asynchronous=True) as client:
            with pytest.raises(SegmentationTypeError, match="asyncio.to_thread"):
                with cluster_client(client):
                    pass

    asyncio.run(main())
