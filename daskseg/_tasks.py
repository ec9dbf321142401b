"""Many block tasks on a cluster: one small graph per block, a bounded window in flight.

The writer (blocks of a mask -> encoded frames) and the reader's ``to_zarr`` (blocks of a SEG ->
Zarr regions) both run one task per block of a Dask array. Submitting the whole graph at once
would let results pile up faster than the client consumes them; submitting block by block with
the whole graph attached would resend it every time. So each block gets only its own, culled,
part of the optimized graph, and at most a few tasks per worker thread are on the cluster.
"""

from __future__ import annotations

import threading
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, cast

import dask
import dask.array as da
import numpy as np
from dask.core import flatten, istask
from dask.delayed import Delayed
from dask.optimization import cull
from distributed import as_completed
from distributed.comm import CommClosedError
from distributed.scheduler import KilledWorker

from daskseg._client import (
    CLUSTER_FAILURES,
    WorkerlessClock,
    available_cores,
    cancel_quietly,
    cluster_workers,
    cluster_workers_if_known,
    forget_cancelled_gather,
    gathers_directly,
    wait_until_stopped,
    workers_on_loopback,
)
from daskseg._pack import PackedBlock, pack_block, unpacked
from daskseg.errors import ClusterError

__all__ = ["DataTask", "block_tasks", "compute_into_memory", "compute_settled", "computed_blocks",
           "run_windowed"]


@dataclass(frozen=True)
class DataTask:
    """A task whose input (a block of a mask in memory) is packed when the task is submitted.

    :func:`run_windowed` packs ``data`` (``pack(data)``) when it submits the task. A large
    input is scattered (straight to a worker on this machine) and ``make(future of it)``
    computed: it then travels once, not inside the graph through the scheduler (which pickles
    it again for the worker). A small one (see ``_to_scatter``) goes inside the task,
    ``make(packed data)``. ``make(data)`` computes it anywhere else (tests, the local
    scheduler), so the task takes ``data`` packed or not.
    """

    data: Any
    make: Callable[[Any], Delayed]
    pack: Callable[[Any], Any] | None = None


def _packed(task: DataTask) -> Any:
    return task.data if task.pack is None else task.pack(task.data)


# An input up to this size (a mask block packed small) travels inside its task, through the
# scheduler, which holds a window of them while they run (and, after, distributed's log of
# recent messages keeps the last 1,000 under 1 MB of each stream, `distributed.admin.
# low-level-log-length`; the README says so): a scatter costs the client, the scheduler
# and the worker 2-3 ms of CPU a task more (measured with 5 MB blocks that pack to a few KB,
# 256 tasks on 2 workers: 7-8 ms a task against 5 ms), which a small machine takes from the
# codec (300-slice volume writes, in turns: 7-8% faster). Larger inputs go straight to a worker.
_INLINE_MAX_BYTES = 256 * 2**10
# And at most this much in one submission: distributed warns of a graph over 10 MB, and a
# window of a large cluster's tasks could carry that much.
_INLINE_MAX_SUBMISSION_BYTES = 4 * 2**20


def _inline_size(data: Any) -> int | None:
    """The bytes of a task's input if it may go inside its task, else None (scattered)."""
    if isinstance(data, PackedBlock):
        size = len(data.data)
    elif isinstance(data, np.ndarray):
        size = data.nbytes
    else:
        return None
    return size if size <= _INLINE_MAX_BYTES else None


def _to_scatter(packed: dict[int, Any]) -> list[int]:
    """Which of a submission's inputs are scattered: the large ones, and the small ones past
    the submission's allowance."""
    scattered, total = [], 0
    for index, data in packed.items():
        size = _inline_size(data)
        if size is None or total + size > _INLINE_MAX_SUBMISSION_BYTES:
            scattered.append(index)
        else:
            total += size
    return scattered


class _BlockGraph:
    """The tasks of one block, computed by one task on a worker (dask's synchronous scheduler).

    A block made of several chunks of the input (reads, a rechunk, the function applied) would
    otherwise be several tasks, each costing the scheduler, the client and the worker's event
    loop a few milliseconds. As an opaque callable, the graph travels inside its task unparsed.
    A numpy array that other blocks read too stays outside under its own key, shared as
    before rather than sent inside every block's task (it can be large); its values are the
    task's arguments (``data_keys``). Other plain data, such as the Zarr array object every
    block reads from (its path and metadata), travels inside.
    """

    def __init__(self, graph: dict, key: Any, data_keys: list[Any]) -> None:
        self.graph = graph
        self.key = key
        self.data_keys = data_keys

    def __call__(self, *data: Any) -> Any:
        from dask.local import get_sync

        graph = dict(self.graph)
        try:
            from dask._task_spec import DataNode
        except ImportError:  # dask before 2024.12: a plain value in a graph is data
            graph.update(zip(self.data_keys, data))
        else:
            graph.update({key: DataNode(key, value) for key, value in zip(self.data_keys, data)})
        return get_sync(graph, self.key)


def _holds_an_array(node: Any) -> bool:
    """Whether a graph's data node holds a numpy array (``DataNode.value``, or the value itself
    in the graphs of dask before 2024.12)."""
    return isinstance(getattr(node, "value", node), np.ndarray)


def block_tasks(array: da.Array, then: Callable[[Any], Any] | None = None) -> np.ndarray:
    """One Delayed per block of ``array``, each one task carrying only the graph that block needs.

    The graph is optimized once for all blocks (so that, for example, a block's read fuses with
    the function applied to it), then culled per block. A block whose culled graph still holds
    more than one task (not counting plain data, such as the Zarr array read) runs it as a
    whole in one task (:class:`_BlockGraph`), unless another block needs one of those tasks
    too (an input chunk cut across two blocks): that one is computed once and shared, as Dask
    would, rather than read again by each block. With ``then``, each Delayed is ``then`` of
    the block, in a task of its own on the worker that holds the block.
    """
    keys = list(flatten(array.__dask_keys__()))
    graph = dict(array.__dask_optimize__(array.__dask_graph__(), keys))
    culled = {key: cull(graph, [key])[0] for key in keys}
    needed_by = Counter(name for part in culled.values() for name in part)
    tasks = np.empty(array.numblocks, dtype=object)
    for key, part in culled.items():
        own = [name for name, node in part.items() if istask(node)]
        if len(own) > 1 and all(needed_by[name] == 1 for name in own):
            data_keys = [name for name, node in part.items() if name not in own
                         and needed_by[name] > 1 and _holds_an_array(node)]
            inner = {name: node for name, node in part.items() if name not in data_keys}
            part = {**{name: part[name] for name in data_keys},
                    key: (_BlockGraph(inner, key, data_keys), *data_keys)}
        if then is not None:
            part = {**part, (f"{key[0]}-then", *key[1:]): (then, key)}
            key = (f"{key[0]}-then", *key[1:])
        tasks[key[1:]] = Delayed(key, part)
    return tasks


def run_windowed(
    client: Any, tasks: Sequence[Delayed | DataTask], what: str,
    workers: dict[str, int] | None = None, on_submitted: Callable[[], Any] | None = None,
    settle: bool = False, few_gathers: bool = False,
    check: Callable[[], None] | None = None,
) -> Iterator[tuple[int, Any]]:
    """Compute ``tasks`` on the cluster; yield ``(index, result)`` as each finishes.

    At most a few tasks per worker thread are in flight, refilled in groups (each compute call
    costs a graph submission) early enough that every worker has a task queued behind the one it
    runs. A task's result is released on the cluster once yielded. On any error, or if the
    caller stops early, the tasks still in flight are cancelled.

    A task whose scattered input died with its worker (which the scheduler cannot compute
    again) is sent again with its data, up to ``distributed.scheduler.allowed-failures`` times.
    An exception that a task raised (a bad value in a mask, a store that cannot be read) reaches
    the caller as it is. When the cluster, not the task, failed (a worker died too often, the
    scheduler went away, no worker was left for longer than
    :class:`~daskseg._client.WorkerlessClock` allows) a :class:`~daskseg.errors.ClusterError`
    says that it could not ``what``. ``workers`` is
    :func:`~daskseg._client.cluster_workers`' answer, when the caller asked already;
    ``on_submitted`` is called once the first window of tasks is on the cluster. With
    ``settle``, a failed or abandoned run returns only once the workers no longer run any of its
    cancelled tasks (for tasks that write where the caller then cleans up). Finished tasks are
    gathered one per worker thread at a time, up to 8, or all there are once none is still
    running; with ``few_gathers`` (for small results), up to 8 at a time whatever the threads,
    while a run still makes about eight gathers or more. ``check`` is called whenever tasks
    finish, before their results are gathered: its exception stops the run (work on the client
    that failed meanwhile).
    """
    clock = WorkerlessClock(client)
    stopped, starved = threading.Event(), threading.Event()

    def cluster_error(error: BaseException) -> ClusterError:
        if starved.is_set():
            return clock.error()
        return ClusterError(
            f"The cluster failed to {what}: {error!r}. Check that the scheduler and workers "
            "are alive (and have memory enough for a block)."
        )

    try:
        if client.status != "running":  # the scheduler went away before any work was sent
            raise CommClosedError(f"the client's connection to the scheduler is {client.status}")
        if workers is None:
            workers = cluster_workers(client)
        threads = max(1, sum(workers.values()))
        direct = gathers_directly(client, workers)
    except CLUSTER_FAILURES as error:
        raise cluster_error(error) from error
    # Tasks whose input is scattered hold it on a worker from submission on: a few per worker
    # thread bound that memory. Tasks that read their own block hold nothing until they run
    # (the scheduler queues them), so more go in one submission: each submission and each
    # gather is a round trip that costs the client's and the scheduler's CPU (measured: 64
    # short tasks took 0.3 s of the client's CPU in windows of 8, 0.11 s all at once).
    carries_data = any(isinstance(task, DataTask) for task in tasks)
    window = max(8, (4 if carries_data else 16) * threads)
    # Each gather is a round trip that costs the client CPU, which the workers lose on a
    # machine of few cores; a caller's progress bar moves with them.
    gather_at_once = min(threads, 8)
    if few_gathers:
        gather_at_once = max(gather_at_once, min(8, len(tasks) // 8))
    index_of: dict[str, int] = {}
    in_flight: dict[str, Any] = {}  # shared with the watchdog thread
    held: dict[str, Any] = {}  # scattered inputs of the tasks in flight
    position = 0

    def submit(count: int) -> list[Any]:
        nonlocal position
        indices = list(range(position, min(position + count, len(tasks))))
        if not indices:
            return []
        futures = send(indices)
        position += len(indices)
        return futures

    def send(indices: list[int]) -> list[Any]:
        """Compute the tasks at ``indices`` of ``tasks``, their inputs packed, the large ones
        scattered; their futures."""
        batch = [tasks[index] for index in indices]
        packed = {i: _packed(task) for i, task in enumerate(batch) if isinstance(task, DataTask)}
        to_scatter = _to_scatter(packed)
        for i in packed.keys() - to_scatter:
            batch[i] = cast(DataTask, batch[i]).make(packed[i])
        scattered: list[Any] = []
        for attempt in range(allowed_failures + 1):
            try:
                # A scatter waits for a worker to take the data: as long as work may wait
                # for workers (distributed's own wait, 30 s, ignored
                # daskseg.no-workers-timeout). Straight to a worker at first; through the
                # scheduler, which knows the live ones, once a worker died under a scatter.
                scattered = client.scatter(
                    [packed[i] for i in to_scatter], direct=direct and not attempt,
                    hash=False, timeout=clock.timeout,
                ) if to_scatter else []
                break
            except TimeoutError as error:  # an OSError too: before the retry below
                if "No valid workers" in str(error):
                    raise clock.error() from error
                raise cluster_error(error) from error
            except (CommClosedError, OSError) as error:  # the worker died under the scatter
                if attempt == allowed_failures or client.status != "running":
                    raise cluster_error(error) from error
            except Exception as error:
                # Data of daskseg's own, no user code: what fails here is the cluster (one of
                # CLUSTER_FAILURES), or distributed as its cluster closes under it (an
                # AttributeError or KeyError of its own).
                raise cluster_error(error) from error
        try:
            for i, data in zip(to_scatter, scattered):
                batch[i] = cast(DataTask, batch[i]).make(data)
            futures = client.compute(batch)
        except CLUSTER_FAILURES as error:
            raise cluster_error(error) from error
        inputs = dict(zip(to_scatter, scattered))
        for offset, future in enumerate(futures):
            index_of[future.key] = indices[offset]
            in_flight[future.key] = future
            if offset in inputs:  # held until the result is in, then let go
                held[future.key] = inputs[offset]
        return futures

    def inputs_lost(batch: list[Any]) -> list[Any]:
        """The tasks of ``batch`` cancelled by the scheduler because their scattered input
        died with its worker (not by this run, stopping)."""
        if stopped.is_set() or starved.is_set():
            return []
        return [future for future in batch if future.status == "cancelled" and future.key in held]

    resent: Counter[int] = Counter()
    allowed_failures = dask.config.get("distributed.scheduler.allowed-failures", 3)

    def send_again(lost: list[Any]) -> list[Any]:
        """Tasks whose scattered input died with its worker, sent again with their data: the
        scheduler cannot recompute scattered data ("lost scattered data"), and the write
        failed where one of a Dask mask's blocks would be computed again."""
        indices = []
        for future in lost:
            index = index_of.pop(future.key)
            del in_flight[future.key]
            held.pop(future.key, None)
            future.release()
            resent[index] += 1
            if resent[index] > allowed_failures:
                raise cluster_error(RuntimeError(
                    f"the input of a task was lost with its worker {resent[index]} times"))
            indices.append(index)
        return send(indices)

    def watch() -> None:
        # as_completed blocks without a timeout: cancelling the futures is what wakes it.
        while not stopped.wait(1.0):
            if clock.expired():
                starved.set()
                cancel_quietly(client, list(in_flight.values()))
                return

    # One task per worker thread first, so that the workers start while the rest of the window
    # is sent: with a whole window of a CT series' in-memory blocks (40 MB) scattered at once,
    # the first task started 0.14 s into the write; with two sent first, at 0.06-0.07 s.
    # Within the try whose finally cancels what is in flight: a KeyboardInterrupt comes where
    # Python waits, as in Thread.start (a run interrupted there left its tasks on the cluster,
    # its watchdog thread running and, for to_zarr, tasks writing after the cleanup).
    try:
        first = submit(min(threads, window))
        first += submit(window - len(first))
        if on_submitted is not None:
            on_submitted()
        queue = as_completed(first, loop=client.loop)
        watchdog = threading.Thread(target=watch, name="daskseg-watchdog", daemon=True)
        watchdog.start()
        finished: list[Any] = []
        for batch in queue.batches():
            # Gathered a few at a time, one round trip for all that finished. Still watched
            # while gathered: a worker that holds a finished result and then leaves sends the
            # key back to waiting, and only the watchdog's cancel ends that wait when no
            # worker is left.
            finished += batch
            if check is not None:
                check()
            if len(finished) < gather_at_once and not queue.is_empty():
                continue
            batch, finished = finished, []
            lost = inputs_lost(batch)
            try:
                results = [] if lost else client.gather(batch, direct=direct)
            except Exception as error:
                lost = inputs_lost(batch)  # the gather met them
                if not lost:
                    failed = any(future.status == "error" for future in batch)
                    if failed and not isinstance(error, KilledWorker):
                        raise  # a task's own exception
                    raise cluster_error(error) from error
            if lost:
                queue.update(send_again(lost))
                finished = [future for future in batch if future not in lost]
                continue
            for future in batch:
                del in_flight[future.key]
                held.pop(future.key, None)
                future.release()
            # Refill before handing the results on, so the workers are not kept waiting.
            if len(in_flight) <= window // 2:
                queue.update(submit(window - len(in_flight)))
            for future, result in zip(batch, results):
                yield index_of.pop(future.key), result
    except BaseException:
        forget_cancelled_gather(client)  # an interrupt in client.gather
        raise
    finally:
        stopped.set()
        if in_flight:
            keys = list(in_flight)
            cancel_quietly(client, list(in_flight.values()))
            if settle:
                # A cancelled task runs on to its end: one that writes (a Zarr region) would
                # write after the caller has removed what it wrote.
                wait_until_stopped(client, keys)


def compute_settled(*collections: Any, **kwargs: Any) -> tuple[Any, ...]:
    """``dask.compute`` with the configured local scheduler; failed, returns only once none of
    its tasks still runs.

    Dask's threads raise the first task's exception while the others run on: tasks that
    write (Zarr regions) then wrote after the caller had removed what they wrote, leaving a
    partial store behind. With the threaded scheduler (Dask's default) the tasks run in a pool
    of this call's own, whose end it waits for.
    """
    from concurrent.futures import ThreadPoolExecutor

    import dask.system
    import dask.threaded
    from dask.base import get_scheduler

    if get_scheduler(collections=collections) is not dask.threaded.get:
        return dask.compute(*collections, **kwargs)
    threads = dask.config.get("num_workers", None) or dask.system.CPU_COUNT
    with ThreadPoolExecutor(threads, thread_name_prefix="daskseg-compute") as pool:
        return dask.compute(*collections, scheduler="threads", pool=pool,
                            num_workers=threads, **kwargs)


def compute_into_memory(
    client: Any, array: da.Array, what: str, on_block: Callable[[], None] | None = None
) -> np.ndarray:
    """``array`` computed into one numpy array on this machine, each block put in its place.

    dask's own compute of a whole array on a cluster sends every block to one worker, which
    concatenates them and sends the whole on through the scheduler (by default), a copy of
    everything at every step: measured, 1.2 to 2 s of a 5 s read of a 256 MB label image on
    two local workers. Here the blocks come back as each finishes (see :func:`computed_blocks`)
    into an array allocated once. ``on_block`` is called after each block (a progress bar).
    Without a client, Dask's threads compute it.
    """
    if client is None:
        result = np.asarray(array.compute(scheduler="threads"))
        if on_block is not None:
            for _ in range(int(np.prod(array.numblocks))):
                on_block()
        return result
    out = np.empty(array.shape, dtype=array.dtype)
    for region, block in computed_blocks(client, array, what):
        out[region] = block
        if on_block is not None:
            on_block()
    return out


def computed_blocks(
    client: Any, array: da.Array, what: str
) -> Iterator[tuple[tuple[slice, ...], np.ndarray]]:
    """Each block of ``array`` computed on the cluster, with its region, as each finishes.

    The blocks come straight from the workers on this machine (see :func:`run_windowed`); from
    workers on other machines LZ4-compressed when that at least halves them
    (:func:`pack_block`; a label image compresses 20 to 100 times). Without a client, Dask's
    threads compute them, as many blocks at a time as there are cores.
    """
    starts = [np.cumsum((0,) + chunks[:-1]) for chunks in array.chunks]

    def region_of(position: tuple[int, ...]) -> tuple[slice, ...]:
        return tuple(slice(int(start[k]), int(start[k]) + chunks[k])
                     for start, chunks, k in zip(starts, array.chunks, position))

    if client is None:
        positions = list(np.ndindex(array.numblocks))
        at_once = available_cores()
        for first in range(0, len(positions), at_once):
            batch = positions[first : first + at_once]
            computed = dask.compute(*(array.blocks[position] for position in batch),
                                    scheduler="threads")
            for position, block in zip(batch, computed):
                yield region_of(position), np.asarray(block)
        return
    workers = cluster_workers_if_known(client)
    remote = workers is not None and not workers_on_loopback(client, workers)
    tasks = block_tasks(array, then=pack_block if remote else None)
    positions = list(np.ndindex(tasks.shape))
    for index, block in run_windowed(client, tasks.ravel().tolist(), what, workers=workers):
        yield region_of(positions[index]), unpacked(block)
