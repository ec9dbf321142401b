"""Real clusters and their faults: killed workers, a lost cluster, dask scheduler/worker processes."""

from __future__ import annotations

import concurrent.futures as cf
import functools
import os
import pathlib
import signal
import socket
import subprocess
import sys
import threading
import time

import dask
import dask.array as da
import highdicom as hd
import numpy as np
import pytest
from distributed import Client, LocalCluster

from daskseg import (
    ClusterError,
    DaskExecutor,
    open_segmentation,
    read_segmentation,
    write_segmentation,
)
from daskseg.synthetic import make_segment_descriptions, make_slide, make_tissue_mask

ROWS, COLUMNS, TILE = 512, 768, 128


def die_once(block, marker, block_info=None):
    """Kill this worker process the first time any worker computes the block at (0, 0)."""
    if block_info[None]["chunk-location"][:2] == (0, 0):
        try:
            fd = os.open(marker, os.O_CREAT | os.O_EXCL)
        except FileExistsError:
            return block
        os.close(fd)
        os.kill(os.getpid(), signal.SIGKILL)
    return block


def always_die(block, block_info=None):
    if block_info[None]["chunk-location"][:2] == (1, 1):
        os.kill(os.getpid(), signal.SIGKILL)
    return block


def slow(block):
    time.sleep(0.3)
    return block


def kill_self_once(marker, value):
    try:
        fd = os.open(marker, os.O_CREAT | os.O_EXCL)
    except FileExistsError:
        return value * 2
    os.close(fd)
    os.kill(os.getpid(), signal.SIGKILL)


def kill_self(_):
    os.kill(os.getpid(), signal.SIGKILL)


def double(x):
    return 2 * x


def die_late_once(marker, value):
    """Outlive a batch's budget, then kill the worker, the first time only (per marker);
    without a marker, return at once."""
    if marker is not None and not os.path.exists(marker):
        time.sleep(0.3)
        try:
            os.close(os.open(marker, os.O_CREAT | os.O_EXCL))
        except FileExistsError:
            return value
        os.kill(os.getpid(), signal.SIGKILL)
    return value


def sleep_then(x, seconds):
    time.sleep(seconds)
    return x


@pytest.fixture
def fresh_cluster(request):
    """A cluster of two nanny-managed worker processes that a test may break.

    A task fails with KilledWorker after one worker death (``allowed-failures``, 1 unless the
    test passes another count as the fixture's parameter).
    """
    allowed_failures = getattr(request, "param", 1)
    with dask.config.set({"distributed.scheduler.allowed-failures": allowed_failures}):
        cluster = LocalCluster(n_workers=2, threads_per_worker=1, dashboard_address="127.0.0.1:0",
                               memory_limit="2GiB")
    client = Client(cluster, set_as_default=False)
    yield cluster, client
    client.close()
    cluster.close()


@pytest.fixture(scope="module")
def inputs():
    source = make_slide(ROWS, COLUMNS, tile_size=(TILE, TILE))
    labels = make_tissue_mask(ROWS, COLUMNS, 3, chunks=256)
    return source, labels, make_segment_descriptions(3)


@pytest.mark.timeout(240)
def test_killed_worker_is_recovered_and_the_file_equals_the_mask(tmp_path, fresh_cluster, inputs):
    _, client = fresh_cluster
    source, labels, descriptions = inputs
    marker = str(tmp_path / "killed-once")
    mask = labels.map_blocks(die_once, marker, dtype=labels.dtype)
    path = write_segmentation(mask, source, descriptions, tmp_path / "seg.dcm",
                              transfer_syntax_uid="1.2.840.10008.1.2.4.90", client=client)
    assert os.path.exists(marker)  # a worker really died
    np.testing.assert_array_equal(
        hd.seg.segread(path).get_total_pixel_matrix(combine_segments=True), labels.compute()
    )
    assert sorted(os.listdir(tmp_path)) == ["killed-once", "seg.dcm"]


@pytest.mark.timeout(240)
def test_unrecoverable_worker_deaths_raise_and_leave_nothing(tmp_path, fresh_cluster, inputs):
    _, client = fresh_cluster
    source, labels, descriptions = inputs
    out = tmp_path / "out"
    out.mkdir()
    mask = labels.map_blocks(always_die, dtype=labels.dtype)
    with pytest.raises(ClusterError, match="cluster failed"):
        write_segmentation(mask, source, descriptions, out / "seg.dcm", client=client)
    assert os.listdir(out) == []


@pytest.mark.timeout(120)
# Scaling to zero may stop a worker in the middle of a task, which the scheduler counts as a
# death of that task's worker; two such counts must not turn into KilledWorker here.
@pytest.mark.parametrize("fresh_cluster", [3], indirect=True)
@pytest.mark.parametrize("loss, message", [
    ("scheduler", "cluster failed to encode a block"),
    ("workers", "no workers for 2 s"),
])
def test_lost_cluster_raises_and_leaves_nothing(tmp_path, fresh_cluster, inputs, loss, message):
    """The whole cluster closed, or every worker gone for good (scaled to zero) while the
    scheduler lives on: a ClusterError, not a wait forever, and nothing at the destination."""
    cluster, client = fresh_cluster
    source, labels, descriptions = inputs
    mask = labels.rechunk(TILE).map_blocks(slow, dtype=labels.dtype)
    lose = cluster.close if loss == "scheduler" else functools.partial(cluster.scale, 0)
    threading.Timer(1.0, lose).start()
    with dask.config.set({"daskseg.no-workers-timeout": "2s"}):
        with pytest.raises(ClusterError, match=message):
            write_segmentation(mask, source, descriptions, tmp_path / "seg.dcm", client=client)
    assert os.listdir(tmp_path) == []


def unreadable(block, block_info=None):
    if block_info[None]["chunk-location"][:2] == (1, 2):
        raise PermissionError("chunk 1.2 of the mask's store cannot be read")
    return block


def test_a_task_error_is_not_taken_for_a_cluster_failure(tmp_path, dask_client, inputs):
    """An OSError that the mask's own store raises reaches the caller as it is."""
    source, labels, descriptions = inputs
    mask = labels.map_blocks(unreadable, dtype=labels.dtype)
    with pytest.raises(PermissionError, match="cannot be read"):
        write_segmentation(mask, source, descriptions, tmp_path / "seg.dcm", client=dask_client)
    assert os.listdir(tmp_path) == []


@pytest.mark.timeout(120)
def test_to_zarr_on_a_cluster_without_workers_raises(tmp_path, fresh_cluster, inputs):
    cluster, client = fresh_cluster
    source, labels, descriptions = inputs
    path = write_segmentation(labels, source, descriptions, tmp_path / "seg.dcm",
                              client=client)
    cluster.scale(0)
    deadline = time.monotonic() + 30
    while client.nthreads() and time.monotonic() < deadline:
        time.sleep(0.1)
    with dask.config.set({"daskseg.no-workers-timeout": "2s"}):
        with pytest.raises(ClusterError, match="no workers for 2 s"):
            open_segmentation(path).to_zarr(tmp_path / "labels.zarr", client=client)


@pytest.mark.timeout(120)
@pytest.mark.parametrize("fresh_cluster", [3], indirect=True)  # scaling to zero is no death
def test_executor_fails_its_calls_when_the_cluster_has_no_workers(fresh_cluster):
    cluster, client = fresh_cluster
    with dask.config.set({"daskseg.no-workers-timeout": "2s"}):
        executor = DaskExecutor(client, batch_size=1)
    futures = [executor.submit(sleep_then, i, 0.3) for i in range(40)]
    threading.Timer(1.0, cluster.scale, [0]).start()
    for future in futures:
        try:
            future.result(timeout=60)  # those that finished before the workers left
        except ClusterError as error:
            assert "no workers for 2 s" in str(error)
    assert any(isinstance(f.exception(), ClusterError) for f in futures)
    executor.shutdown(wait=True)  # returns: nothing is left waiting on the cluster


@pytest.mark.timeout(240)
def test_executor_survives_or_reports_killed_workers(tmp_path, fresh_cluster):
    _, client = fresh_cluster
    with DaskExecutor(client, batch_size=1) as executor:
        marker = str(tmp_path / "killed-once")
        # Killed once: dask reruns the batch on the restarted worker.
        assert executor.submit(kill_self_once, marker, 21).result(timeout=120) == 42
        # Killed every time: a clear error, not a hang; other calls still succeed.
        doomed = executor.submit(kill_self, 0)
        with pytest.raises(ClusterError, match="died each time it ran it"):
            doomed.result(timeout=120)
        assert executor.submit(double, 4).result(timeout=120) == 8


@pytest.mark.timeout(240)
@pytest.mark.parametrize("fresh_cluster", [3], indirect=True)
def test_executor_recovers_calls_whose_workers_all_died_after_their_batches(tmp_path,
                                                                            fresh_cluster):
    """Calls that outlive their batch are collected by a task pinned to their worker. Both
    workers died that way at once: the collections, sent while no worker was up, stayed
    'no-worker' on the scheduler after new workers joined, and the executor (and the
    interpreter's exit) waited for them forever. Now they are run again, once the cluster's
    workers are known to be others."""
    _, client = fresh_cluster
    with DaskExecutor(client, batch_size=2, batch_duration=0.05) as executor:
        for value in range(4):  # measured fast, so that two go in a batch
            assert executor.submit(die_late_once, None, value).result(timeout=60) == value
        futures = [executor.submit(die_late_once, str(tmp_path / f"once-{k}") if k % 2 == 0
                                   else None, k)
                   for k in range(4)]  # batches [dies late, quick] twice
        assert [future.result(timeout=120) for future in futures] == [0, 1, 2, 3]
        assert executor.submit(double, 4).result(timeout=60) == 8


_INTERRUPTED_START = """
import os, signal, sys, threading, time
import psutil
from daskseg import write_segmentation
from daskseg.synthetic import make_segment_descriptions, make_slide, make_tissue_mask

if __name__ == "__main__":
    threading.Timer(float(sys.argv[2]), signal.raise_signal, (signal.SIGINT,)).start()
    try:
        write_segmentation(make_tissue_mask(2048, 2048, 2, chunks=512),
                           make_slide(2048, 2048, tile_size=(256, 256)),
                           make_segment_descriptions(2), os.path.join(sys.argv[1], "a.dcm"))
    except KeyboardInterrupt:
        pass
    time.sleep(3)
    alive = [child for child in psutil.Process().children(recursive=True)  # workers, nannies
             if child.is_running() and child.status() != psutil.STATUS_ZOMBIE
             and "spawn_main" in " ".join(child.cmdline())]
    print("alive", len(alive), sorted(os.listdir(sys.argv[1])), flush=True)
"""


@pytest.mark.timeout(120)
@pytest.mark.parametrize("after", [0.3, 0.6])
def test_an_interrupt_while_the_writer_starts_its_cluster_leaves_nothing_running(tmp_path,
                                                                                 after):
    """Ctrl-C while write_segmentation (no client) started its own LocalCluster: its worker
    processes ran on in the caller's process (a notebook's kernel) until it exited."""
    pytest.importorskip("psutil")
    script = tmp_path / "interrupted.py"
    script.write_text(_INTERRUPTED_START)
    (tmp_path / "out").mkdir()
    done = subprocess.run([sys.executable, str(script), str(tmp_path / "out"), str(after)],
                          capture_output=True, text=True, timeout=100, cwd=tmp_path)
    assert "alive 0 []" in done.stdout, done.stdout + done.stderr[-2000:]


@pytest.mark.timeout(240)
@pytest.mark.parametrize("fresh_cluster", [3], indirect=True)
def test_a_worker_killed_while_it_holds_an_in_memory_masks_blocks(tmp_path, fresh_cluster):
    """A numpy mask's blocks are scattered to the workers; one that died took them with it
    and the write failed ("lost scattered data", FutureCancelledError, or CommClosedError from
    a scatter to it): now the tasks are sent again with their blocks, and the file equals an
    undisturbed write's."""
    _, client = fresh_cluster
    source = make_slide(4096, 4096, tile_size=(256, 256))
    mask = np.random.default_rng(0).random((4096, 4096), dtype=np.float32)  # no compressing
    options = dict(segmentation_type="FRACTIONAL", transfer_syntax_uid=hd.UID(
        "1.2.840.10008.1.2.4.90"), client=client)
    descriptions = make_segment_descriptions(1, segmentation_type="FRACTIONAL")
    calm = write_segmentation(mask, source, descriptions, tmp_path / "calm.dcm", **options)
    pid = next(iter(client.run(os.getpid).values()))
    killer = threading.Timer(0.4, os.kill, (pid, signal.SIGKILL))
    killer.start()
    try:
        path = write_segmentation(mask, source, descriptions, tmp_path / "seg.dcm", **options)
    finally:
        killer.cancel()
    np.testing.assert_array_equal(read_segmentation(path).compute(scheduler="threads"),
                                  read_segmentation(calm).compute(scheduler="threads"))


@pytest.mark.timeout(120)
def test_a_cluster_closed_as_blocks_are_scattered_is_a_cluster_error(tmp_path):
    """distributed's own AttributeError or KeyError, as its cluster closed under a scatter,
    came out as they were (about half the tries). A ClusterError now, and nothing written;
    or, where the blocks were all in before the cluster went, the whole file."""
    mask = np.random.default_rng(0).random((4096, 4096), dtype=np.float32)
    source = make_slide(4096, 4096, tile_size=(256, 256))
    descriptions = make_segment_descriptions(1, segmentation_type="FRACTIONAL")
    outcomes = []
    for delay in (0.05, 0.1, 0.15, 0.3):
        cluster = LocalCluster(n_workers=2, threads_per_worker=1, dashboard_address="127.0.0.1:0")
        client = Client(cluster, set_as_default=False)
        closer = threading.Timer(delay, cluster.close)
        path = tmp_path / f"seg-{delay}.dcm"
        try:
            closer.start()
            write_segmentation(mask, source, descriptions, path,
                               segmentation_type="FRACTIONAL", client=client)
            outcomes.append("written")
            read_segmentation(path).compute(scheduler="threads")  # whole
        except ClusterError:
            outcomes.append("ClusterError")
            assert not path.exists()
        finally:
            closer.join()
            client.close()
            cluster.close()
    assert "ClusterError" in outcomes, outcomes
    assert not [p.name for p in tmp_path.iterdir() if p.name.startswith(".")]


def run_or_die(marker_folder, value, fatal):
    """Note a run of ``value`` (a file per run), then return it, or kill the process."""
    return sleep_then_run_or_die(marker_folder, value, 0, value == fatal)


@pytest.mark.timeout(240)
def test_executor_fails_only_the_call_that_kills_its_worker(tmp_path, fresh_cluster):
    """A batch whose worker died each time it ran it failed all its calls (those that had
    returned too) with 'lost a batch of 6 calls'; its calls go again one by one, and only the
    call that ends its process fails."""
    _, client = fresh_cluster
    with DaskExecutor(client, batch_size=6, batch_duration=1.0) as executor:
        executor.submit(run_or_die, str(tmp_path), -1, 3).result(timeout=60)  # measured fast
        futures = [executor.submit(run_or_die, str(tmp_path), k, 3) for k in range(6)]
        cf.wait(futures, timeout=200)
        with pytest.raises(ClusterError, match="died each time it ran it"):
            futures[3].result()
        assert [futures[k].result() for k in (0, 1, 2, 4, 5)] == [0, 1, 2, 4, 5]


@pytest.mark.timeout(240)
def test_executor_does_not_blame_a_call_queued_behind_the_one_that_kills_its_worker(tmp_path):
    """On a one-thread worker a call sent behind the killer is on the worker at each of its
    deaths, and distributed fails both with KilledWorker; the executor ran it alone again,
    nothing else of its own on the cluster, and only the killer failed."""
    with cluster_failing_tasks_at_two_deaths(1, 1) as cluster, \
            Client(cluster, set_as_default=False) as client:
        with DaskExecutor(client, batch_size=2, batch_duration=1.0) as executor:
            executor.submit(run_or_die, str(tmp_path), -1, 3).result(timeout=60)  # fast
            killer = executor.submit(run_or_die, str(tmp_path), 3, 3)
            bystander = executor.submit(run_or_die, str(tmp_path), 7, 3)
            assert bystander.result(timeout=200) == 7
            with pytest.raises(ClusterError, match="died each time it ran it"):
                killer.result(timeout=200)


def sleep_then_run_or_die(marker_folder, value, seconds, die):
    """Note a run of ``value``, sleep, then return it, or kill the process."""
    open(os.path.join(marker_folder, f"{value}-{time.monotonic_ns()}"), "w").close()
    time.sleep(seconds)
    if die:
        os.kill(os.getpid(), signal.SIGKILL)
    return value


def cluster_failing_tasks_at_two_deaths(workers: int, threads: int) -> LocalCluster:
    """A LocalCluster whose scheduler fails a task (KilledWorker) at its second worker death."""
    with dask.config.set({"distributed.scheduler.allowed-failures": 1}):
        return LocalCluster(n_workers=workers, threads_per_worker=threads,
                            dashboard_address="127.0.0.1:0", memory_limit="2GiB")


def killer_beside_a_long_call(executor, folder, seconds):
    """A call of ``seconds`` on the cluster, then a call that kills its worker; returned once
    the killer has run twice (its task failed with KilledWorker, the long call still on)."""
    long_call = executor.submit(sleep_then_run_or_die, str(folder), "L", seconds, False)
    time.sleep(0.3)
    killer = executor.submit(sleep_then_run_or_die, str(folder), "K", 0, True)
    deadline = time.monotonic() + 60
    while len(list(folder.glob("K-*"))) < 2 and time.monotonic() < deadline:
        time.sleep(0.01)
    return long_call, killer


@pytest.mark.timeout(240)
def test_executor_does_not_blame_a_long_call_for_the_deaths_another_thread_caused(tmp_path):
    """A call that outlives its batch (its outcome collected by a task of its own) is lost
    when its worker dies; on a two-thread worker another call killed it each time, and the
    innocent call failed 'could not recover it'. It is now run alone once more."""
    with cluster_failing_tasks_at_two_deaths(1, 2) as cluster, \
            Client(cluster, set_as_default=False) as client:
        with DaskExecutor(client) as executor:
            warm = [str(tmp_path / "warm")] * 40
            os.mkdir(warm[0])
            # Measured fast: calls go in batches, and two may wait on a worker thread.
            list(executor.map(sleep_then_run_or_die, warm, range(40), [0] * 40, [False] * 40))
            innocent = executor.submit(sleep_then_run_or_die, str(tmp_path), "S", 2.0, False)
            others = [executor.submit(sleep_then_run_or_die, warm[0], k, 0, False)
                      for k in range(5)]
            time.sleep(0.3)
            killer = executor.submit(sleep_then_run_or_die, str(tmp_path), "K", 0.3, True)
            others += [executor.submit(sleep_then_run_or_die, warm[0], k, 0, False)
                       for k in range(5, 10)]
            assert innocent.result(timeout=200) == "S"
            assert [future.result(timeout=200) for future in others] == list(range(10))
            with pytest.raises(ClusterError, match="died each time it ran it"):
                killer.result(timeout=200)


@pytest.mark.timeout(240)
@pytest.mark.parametrize("how", ["cancel", "shutdown"])
def test_a_call_back_from_a_dead_worker_stays_running(tmp_path, how):
    """A call whose worker died while it ran came back to the queue pending: cancel() and
    shutdown(cancel_futures=True) cancelled a call that had run (killing its worker), and the
    caller never learnt of it. A running call is never cancelled, as in a process pool."""
    with cluster_failing_tasks_at_two_deaths(2, 1) as cluster, \
            Client(cluster, set_as_default=False) as client:
        executor = DaskExecutor(client)
        long_call, killer = killer_beside_a_long_call(executor, tmp_path, 8.0)
        # Both its workers died (KilledWorker): it is back on the client, to run alone again
        # once the long call is done.
        time.sleep(1.0)
        assert len(list(tmp_path.glob("K-*"))) == 2 and not killer.done()
        if how == "cancel":
            assert not killer.cancel()
            executor.shutdown(wait=True)
        else:
            executor.shutdown(wait=True, cancel_futures=True)
        assert not killer.cancelled()
        assert isinstance(killer.exception(timeout=200), ClusterError)
        assert long_call.result(timeout=60) == "L"


@pytest.mark.timeout(240)
def test_calls_do_not_wait_behind_a_slow_call_for_a_quarantined_one(tmp_path):
    """While a call waits to run alone, other calls waited for every call on the cluster to
    end (behind a slow one, with a worker idle); now for a few batch durations at most."""
    with cluster_failing_tasks_at_two_deaths(2, 1) as cluster, \
            Client(cluster, set_as_default=False) as client:
        with DaskExecutor(client) as executor:
            slow_call, killer = killer_beside_a_long_call(executor, tmp_path, 15.0)
            calls = [executor.submit(sleep_then_run_or_die, str(tmp_path), k, 0, False)
                     for k in range(10)]
            assert [call.result(timeout=200) for call in calls] == list(range(10))
            assert not slow_call.done()  # they did not wait for it
            with pytest.raises(ClusterError, match="died each time it ran it"):
                killer.result(timeout=200)
            assert slow_call.result(timeout=200) == "L"


# --------------------------------------------------------------------------- dask CLI cluster


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_dask_cli_cluster(folder: pathlib.Path, workers: int = 2) -> tuple[str, list]:
    """`dask scheduler` and ``workers`` `dask worker` processes on 127.0.0.1, workers up."""
    port = free_port()
    address = f"tcp://127.0.0.1:{port}"
    dask_command = str(pathlib.Path(sys.executable).with_name("dask"))
    processes = [subprocess.Popen(
        [dask_command, "scheduler", "--host", "127.0.0.1", "--port", str(port),
         "--no-dashboard"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=folder,
    )]
    try:
        for _ in range(workers):
            processes.append(subprocess.Popen(
                [dask_command, "worker", address, "--nthreads", "1", "--nworkers", "1",
                 "--no-dashboard", "--host", "127.0.0.1", "--local-directory", str(folder)],
                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=folder,
            ))
        with Client(address, timeout=60) as client:
            client.wait_for_workers(workers, timeout=120)
    except BaseException:
        stop_processes(processes)
        raise
    return address, processes


def stop_processes(processes: list) -> None:
    for process in reversed(processes):
        process.terminate()
    for process in processes:
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()


@pytest.fixture(scope="module")
def dask_cli_cluster(tmp_path_factory):
    """`dask scheduler` and two `dask worker` processes on 127.0.0.1."""
    address, processes = start_dask_cli_cluster(tmp_path_factory.mktemp("dask-cli"))
    try:
        yield address
    finally:
        stop_processes(processes)


@pytest.mark.timeout(180)
@pytest.mark.parametrize("own_client", [False, True])
def test_executor_calls_fail_when_the_scheduler_is_killed(tmp_path, own_client):
    """Calls queued and on the cluster fail with ClusterError once the client gives up on its
    scheduler, and shutdown returns: some waited forever (their futures never call back)."""
    import concurrent.futures

    address, processes = start_dask_cli_cluster(tmp_path)
    try:
        # The client reconnects for its timeout (30 s by default) before it closes.
        with dask.config.set({"distributed.comm.timeouts.connect": "5s"}):
            client = Client(address, set_as_default=False) if own_client else None
            executor = DaskExecutor(client) if own_client else DaskExecutor(address=address)
        futures = [executor.submit(time.sleep, 2.0) for _ in range(6)]
        time.sleep(1.0)
        processes[0].send_signal(signal.SIGKILL)
        processes[0].wait()
        done, not_done = concurrent.futures.wait(futures, timeout=90)
        assert not not_done
        assert all(isinstance(future.exception(), ClusterError) for future in done)
        late = executor.submit(time.sleep, 0)
        assert isinstance(late.exception(timeout=30), ClusterError)
        stopping = threading.Thread(target=executor.shutdown, daemon=True)
        stopping.start()
        stopping.join(30)
        assert not stopping.is_alive()
        if client is not None:
            client.close()
    finally:
        stop_processes(processes)


@pytest.mark.timeout(300)
def test_writer_and_reader_on_a_dask_cli_cluster(tmp_path, dask_cli_cluster, inputs):
    source, labels, descriptions = inputs
    with Client(dask_cli_cluster) as client:
        assert len(client.scheduler_info()["workers"]) == 2
        path = write_segmentation(labels, source, descriptions, tmp_path / "seg.dcm",
                                  transfer_syntax_uid="1.2.840.10008.1.2.4.90", client=client)
        # The workers spooled their frames beside it (they listen on 127.0.0.1): all removed.
        assert os.listdir(tmp_path) == ["seg.dcm"]
        got = client.compute(read_segmentation(path, combine_segments=True)).result()
    np.testing.assert_array_equal(got, labels.compute())
    np.testing.assert_array_equal(
        hd.seg.segread(path).get_total_pixel_matrix(combine_segments=True), labels.compute()
    )


@pytest.mark.timeout(300)
def test_executor_by_address_with_highdicom(dask_cli_cluster, inputs):
    source, labels, descriptions = inputs
    mask = labels.compute()

    def build(workers):
        return hd.seg.Segmentation(
            [source], mask[None], "BINARY", descriptions, hd.UID(), 1, hd.UID(), 1, "m", "m",
            "1", "1", transfer_syntax_uid="1.2.840.10008.1.2.4.90", tile_pixel_array=True,
            dimension_organization_type="TILED_FULL", omit_empty_frames=False, workers=workers,
        ).PixelData

    with DaskExecutor(address=dask_cli_cluster) as executor:
        assert build(executor) == build(0)
        pids = {f.result(timeout=60) for f in [executor.submit(os.getpid) for _ in range(20)]}
    assert os.getpid() not in pids


def test_uniform_mask_of_ones(tmp_path, inputs):
    """Every frame full: the cached encoding of a uniform frame serves all of them."""
    source, _, descriptions = inputs
    big = da.ones((ROWS, COLUMNS), dtype=np.uint8, chunks=TILE)
    with Client(processes=False, n_workers=1, dashboard_address="127.0.0.1:0") as client:
        path = write_segmentation(big, source, descriptions, tmp_path / "seg.dcm",
                                  dimension_organization_type="TILED_FULL", client=client)
    assert (hd.seg.segread(path).get_total_pixel_matrix(combine_segments=True) == 1).all()


# On a worker: which of the packages that only the client needs it has imported. A lambda, so
# that cloudpickle sends it by value: a function of this module would import the module there,
# and with it highdicom and dask.array.
_client_side_modules_loaded = lambda: sorted(  # noqa: E731
    name for name in ("highdicom", "scipy", "zarr", "dask.array") if name in __import__("sys").modules
)


def test_workers_of_a_volume_write_and_read_import_only_what_coding_needs(tmp_path,
                                                                          fresh_cluster):
    # A worker unpickles each function it runs by importing its module: helpers that lived in
    # client-side modules once pulled highdicom, dask.array and SciPy into every worker (22 to
    # 38 MB each).
    from daskseg.synthetic import make_ct_series, make_label_volume

    _, client = fresh_cluster
    client.restart()  # workers that ran nothing yet: earlier tests share no imports with them
    labels, series = make_label_volume(8, 64, 64, 3), make_ct_series(8, 64, 64)
    for syntax in ("1.2.840.10008.1.2.1", "1.2.840.10008.1.2.4.90"):
        path = write_segmentation(labels, series, make_segment_descriptions(3),
                                  tmp_path / "seg.dcm", transfer_syntax_uid=syntax,
                                  client=client, overwrite=True)
        assert client.run(_client_side_modules_loaded) == {
            address: [] for address in client.scheduler_info()["workers"]
        }
        read = open_segmentation(path).to_numpy(
            source_sop_instance_uids=[image.SOPInstanceUID for image in series],
            combine_segments=True, client=client,
        )
        assert np.array_equal(read, labels)
        assert client.run(_client_side_modules_loaded) == {
            address: [] for address in client.scheduler_info()["workers"]
        }


@pytest.mark.timeout(120)
def test_a_mask_in_memory_waits_for_workers_as_long_as_configured(tmp_path):
    """Its blocks are scattered: distributed's scatter waited its own 30 s for a worker, and
    the message blamed the workers' memory."""
    import numpy as np
    from distributed import Client, LocalCluster

    source = make_slide(1024, 1024, tile_size=(TILE, TILE))
    # Stored fractions that do not compress: a block of 1 MB, past what travels in its task.
    mask = np.random.default_rng(0).integers(0, 256, (1024, 1024), dtype=np.uint8)
    with LocalCluster(n_workers=0, dashboard_address="127.0.0.1:0") as cluster, Client(cluster) as client:
        with dask.config.set({"daskseg.no-workers-timeout": "2s"}):
            start = time.monotonic()
            with pytest.raises(ClusterError, match="no workers for 2 s"):
                write_segmentation(mask, source,
                                   make_segment_descriptions(1), tmp_path / "seg.dcm",
                                   segmentation_type="FRACTIONAL", client=client)
            assert time.monotonic() - start < 20
    assert list(tmp_path.iterdir()) == []


@pytest.mark.timeout(180)
def test_relative_paths_read_and_written_by_workers_elsewhere(tmp_path, dask_client,
                                                             monkeypatch):
    """The workers started in another folder: a relative SEG path was read there (a
    FileNotFoundError, or another file of that name read without a word), and to_zarr and
    OME-Zarr stores were written there, leaving the client's complete stores of zeros; a
    memory:// store was filled in each worker's memory, this one left zeros."""
    import zarr

    from daskseg import segmentation_to_ome_zarr
    from daskseg.synthetic import make_ct_series, make_label_volume

    labels = make_tissue_mask(ROWS, COLUMNS, 3, chunks=256).compute()
    source = make_slide(ROWS, COLUMNS, tile_size=(TILE, TILE))
    volume, series = make_label_volume(6, 64, 64, 3), make_ct_series(6, 64, 64)
    other = tmp_path / "workers"  # the workers' folder, with SEGs of the same names
    other.mkdir()
    for folder, flip in ((other, True), (tmp_path, False)):
        write_segmentation(labels[::-1] if flip else labels, source,
                           make_segment_descriptions(3), folder / "seg.dcm", client=dask_client)
        write_segmentation(np.asarray(volume)[:, ::-1] if flip else volume, series,
                           make_segment_descriptions(3), folder / "volume.dcm",
                           client=dask_client)
    expected_volume = dask_client.compute(
        open_segmentation(tmp_path / "volume.dcm").to_dask(combine_segments=True)).result()
    monkeypatch.chdir(tmp_path)
    before = dask_client.run(os.getcwd)
    dask_client.run(os.chdir, str(other))
    try:
        decoded = dask_client.compute(read_segmentation("seg.dcm", combine_segments=True))
        np.testing.assert_array_equal(decoded.result(), labels)
        np.testing.assert_array_equal(dask_client.compute(
            open_segmentation("volume.dcm").to_dask(combine_segments=True)).result(),
            expected_volume)
        seg = open_segmentation("seg.dcm")
        for store in ("labels.zarr", f"memory://{tmp_path.name}-labels.zarr"):
            seg.to_zarr(store, combine_segments=True, client=dask_client)
            np.testing.assert_array_equal(zarr.open_array(store, mode="r")[:], labels)
        segmentation_to_ome_zarr(seg, "labels.ome.zarr", client=dask_client)
        level = zarr.open_array("labels.ome.zarr/labels/segmentation/s0", mode="r")
        np.testing.assert_array_equal(level[:], labels)
        assert not list(other.glob(".*partial"))
    finally:
        for worker, folder in before.items():
            dask_client.run(os.chdir, folder, workers=[worker])


@pytest.mark.timeout(180)
def test_a_zarr_mask_removed_during_the_write_is_refused(tmp_path, dask_client):
    """The mask's store removed while its blocks were read: its chunks gone read as the fill
    value, and an empty or part SEG was written without a word. Whatever the moment: the whole
    SEG (removed after the last block), or a SegmentationInputError and no file."""
    import shutil

    import zarr

    from daskseg import SegmentationInputError
    from daskseg.synthetic import make_detailed_mask

    labels = make_detailed_mask(4096, 4096, 5, chunks=1024).compute()
    source = make_slide(4096, 4096, tile_size=(256, 256))
    outcomes = []
    for delay in (0.1, 0.3):
        store = tmp_path / f"mask-{delay}.zarr"
        zarr.create_array(str(store), shape=labels.shape, chunks=(1024, 1024),
                          dtype="uint8")[:] = labels
        remover = threading.Timer(delay, shutil.rmtree, (store,))
        path = tmp_path / f"seg-{delay}.dcm"
        remover.start()
        try:
            write_segmentation(str(store), source, make_segment_descriptions(5), path,
                               transfer_syntax_uid=hd.UID("1.2.840.10008.1.2.4.90"),
                               client=dask_client)
            outcomes.append("written")
            np.testing.assert_array_equal(
                read_segmentation(path, combine_segments=True).compute(scheduler="threads"),
                labels)
        except SegmentationInputError as error:  # or a chunk that vanished as it was read
            outcomes.append("removed" if "was removed while the SEG" in str(error) else "read")
            assert not path.exists()
        finally:
            remover.join()
    assert "written" not in outcomes[:1], outcomes  # removed 0.1 s into a 1-2 s write


@pytest.mark.timeout(180)
def test_masks_the_workers_would_see_otherwise(tmp_path, dask_client, monkeypatch):
    """A relative Zarr path opens relative to each worker's working directory, fsspec's
    memory:// in each worker's own memory: zarr read the fill value there, an empty SEG
    without an error. Now opened where the client sees them."""
    import numpy as np
    import zarr

    from daskseg._inputs import as_dask_array

    labels = make_tissue_mask(ROWS, COLUMNS, 3, chunks=256).compute()
    source = make_slide(ROWS, COLUMNS, tile_size=(TILE, TILE))
    monkeypatch.chdir(tmp_path)
    zarr.create_array("mask.zarr", shape=labels.shape, chunks=(256, 256), dtype="uint8")[:] = (
        labels)
    lazy = as_dask_array("mask.zarr")
    monkeypatch.chdir(tmp_path.parent)  # a worker's working directory elsewhere
    np.testing.assert_array_equal(lazy.compute(scheduler="threads"), labels)
    memory = f"memory://{tmp_path.name}-mask.zarr"
    zarr.create_array(memory, shape=labels.shape, chunks=(256, 256), dtype="uint8")[:] = labels
    for mask in (memory, zarr.open_array(memory, mode="r")):
        path = write_segmentation(mask, source, make_segment_descriptions(3),
                                  tmp_path / "seg.dcm", client=dask_client, overwrite=True)
        np.testing.assert_array_equal(
            read_segmentation(path, combine_segments=True).compute(), labels)
