"""Which Dask cluster to run on: the caller's client, the current one, or a LocalCluster of our own."""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Iterator
from typing import Any
from urllib.parse import urlsplit

import dask
from dask.utils import parse_timedelta
from distributed import Client, LocalCluster, default_client
from distributed.client import FutureCancelledError
from distributed.comm import CommClosedError
from distributed.scheduler import KilledWorker

from daskseg._malloc import register_malloc_plugin
from daskseg.errors import ClusterError, SegmentationTypeError

__all__ = ["CLUSTER_FAILURES", "WorkerlessClock", "available_cores", "cluster_client",
           "cluster_workers", "cluster_workers_if_known", "gathers_directly", "local_cluster",
           "on_loopback", "workers_on_loopback"]

# What a task raises when the cluster, not the task's own code, failed: a worker died too often,
# the scheduler or the connection went away.
CLUSTER_FAILURES = (KilledWorker, FutureCancelledError, CommClosedError, OSError, TimeoutError)


def available_cores() -> int:
    """The cores this process may run on (its affinity where the platform has one, as on
    Linux; else the machine's)."""
    if hasattr(os, "sched_getaffinity"):  # not on macOS or Windows
        return max(1, len(os.sched_getaffinity(0)))
    return os.cpu_count() or 1


def local_cluster(n_workers: int | None = None, **options: Any) -> LocalCluster:
    """Start a LocalCluster set up for frame codecs: one single-threaded worker process per core.

    Processes, not threads, because some codecs hold the GIL (pydicom's RLE path). And without
    the ``MALLOC_TRIM_THRESHOLD_`` that distributed's nannies set by default: setting it turns
    off glibc's dynamic mmap threshold, so every frame buffer of a codec is mmapped and unmapped
    afresh, which makes JPEG 2000 encoding about 1.7x slower on these machines. (A nanny of an
    earlier LocalCluster in this process leaves the variable in ``os.environ``, which workers
    inherit; daskseg's malloc plugin then resets the thresholds, as on any cluster.) distributed's
    periodic work (its event loops' checks, the workers' profiler and memory monitor, the
    dashboard's system monitor) runs less often (:data:`QUIETER_BACKGROUND`), where the Dask
    configuration does not set it: on a small machine, it takes CPU from the codecs.

    Parameters
    ----------
    n_workers : int, optional
        Worker processes; by default one per core available to this process.
    **options
        Further ``distributed.LocalCluster`` arguments (``memory_limit``, ``dashboard_address``
        (by default a free port on 127.0.0.1)...).

    Returns
    -------
    distributed.LocalCluster
        A running cluster; close it (or use it as a context manager) when done.

    Examples
    --------
    >>> with local_cluster(2, memory_limit="4GiB") as cluster:  # doctest: +SKIP
    ...     write_segmentation(mask, source, segments, "seg.dcm", client=Client(cluster))
    """
    n_workers = n_workers or available_cores()
    options.setdefault("threads_per_worker", 1)
    options.setdefault("processes", True)
    # A free port, on loopback only: distributed binds every interface for ":0".
    options.setdefault("dashboard_address", "127.0.0.1:0")
    # The scheduler, nannies and workers read these when they are created (nannies keep them
    # for restarts of their worker).
    settings: dict[str, Any] = {"distributed.nanny.pre-spawn-environ.MALLOC_TRIM_THRESHOLD_": None}
    settings.update(_quieter_background())
    with dask.config.set(settings):
        return LocalCluster(n_workers=n_workers, **options)


#: distributed's periodic work in every process of a cluster, less often than its defaults
#: (20 ms, 10 ms, 100 ms, 500 ms). With the defaults, an idle 2-worker LocalCluster took 0.11-0.15
#: s of CPU a second (scheduler and nannies 0.04-0.07, each worker 0.03-0.04), and a worker
#: encoding frames gave 0.03 s a second of its core to these; with these, 0.03 s a second all
#: told and 0.01 s, and a 300-slice LABELMAP JPEG 2000 write on 2 cores took 0.55 s instead of
#: 0.58 s (medians of 48 writes, in turns). The dashboard still shows all of it, sampled less
#: often; the memory limits are checked 4 times a second, not 10.
QUIETER_BACKGROUND = {
    "distributed.admin.tick.interval": "200ms",  # the event loop's own responsiveness check
    "distributed.worker.profile.interval": "50ms",  # the dashboard's statistical profiler
    "distributed.worker.memory.monitor-interval": "250ms",  # spill, pause, terminate
    "distributed.admin.system-monitor.interval": "1s",  # the dashboard's CPU and memory plots
}


def _quieter_background() -> dict[str, str]:
    """Those of :data:`QUIETER_BACKGROUND` whose value is still distributed's default: one set
    in the Dask configuration (a file, an environment variable, ``dask.config.set``) is kept."""
    defaults = dask.config.merge(*dask.config.defaults)
    return {key: value for key, value in QUIETER_BACKGROUND.items()
            if dask.config.get(key) == dask.config.get(key, config=defaults)}


_LOOPBACK_HOSTS = frozenset({"127.0.0.1", "localhost", "::1"})


# How long a cancel may take: a client closed from another thread has stopped its event loop
# (a client of a scheduler address runs its own), and Client.cancel would wait on it forever.
_CANCEL_SECONDS = 10.0
REACHABLE_STATUSES = ("running", "connecting", "newly-created")


def cancel_quietly(client: Client, futures: list[Any]) -> None:
    """Cancel ``futures`` on the cluster if the client can still reach it, waiting at most a few
    seconds; any failure is ignored (the caller is giving up on these tasks already)."""
    if not futures or client.status not in REACHABLE_STATUSES:
        return
    with contextlib.suppress(Exception):
        client.sync(client._cancel, futures, callback_timeout=_CANCEL_SECONDS)


def forget_cancelled_gather(client: Client) -> None:
    """Mend a client whose gather an interrupt cancelled, so that later gathers work.

    distributed (2026.8) batches concurrent gathers behind one pending request. A
    KeyboardInterrupt that lands in ``Client.gather`` before that request is sent cancels it
    but leaves it as the pending one, and every later gather of the client waits on it and
    fails ("cannot access local variable 'result'"): a notebook's client was useless after a
    Ctrl-C of a write. On the client's event loop (where distributed keeps that state), a
    cancelled pending request is forgotten, now or as it ends.
    """
    def forget(pending: Any) -> None:
        if pending.cancelled() and getattr(client, "_gather_future", None) is pending:
            client._gather_future = None
            client._gather_keys = None

    def mend() -> None:
        pending = getattr(client, "_gather_future", None)
        if pending is None:
            return
        if pending.done():
            forget(pending)
        else:
            pending.add_done_callback(forget)

    if client.status in REACHABLE_STATUSES:
        with contextlib.suppress(Exception):  # a closing loop: nothing to mend
            client.loop.add_callback(mend)


def _running(keys: list[Any], dask_worker: Any = None) -> int:
    """On a worker: how many of ``keys`` its threads still run (a cancelled task runs on)."""
    wanted = set(keys)
    return sum(1 for task in dask_worker.state.executing if task.key in wanted)


def wait_until_stopped(client: Client, keys: list[Any], seconds: float = 60.0) -> None:
    """Wait until no worker runs any of ``keys`` (cancelled tasks finish what they run, writes
    included), at most ``seconds``; at once when the cluster cannot be asked."""
    deadline = time.monotonic() + seconds
    while keys and client.status in REACHABLE_STATUSES and time.monotonic() < deadline:
        try:
            running = client.sync(client._run, _running, keys, callback_timeout=_CANCEL_SECONDS)
        except Exception:
            return
        if not any(running.values()):
            return
        time.sleep(0.05)


def cluster_workers(client: Client) -> dict[str, int]:
    """The cluster's workers, address -> threads, in one round trip to the scheduler.

    A write asks once and passes the answer on (:func:`workers_on_loopback`,
    :func:`gathers_directly`, ``run_windowed``): each question to the scheduler is a round trip
    (10-70 ms each when a thread of this process holds the GIL), and the workers wait for their
    first task until the writer has its answers.
    """
    info = client.scheduler_info().get("workers")
    if info is None:  # a client whose scheduler went away keeps no list of its workers
        raise closed_client_error(client)
    return {address: int(worker.get("nthreads", 1)) for address, worker in info.items()}


def closed_client_error(client: Client) -> ClusterError:
    """The error of work given to a client that has lost its scheduler."""
    return ClusterError(
        f"The Dask client cannot reach its scheduler (client status {client.status!r}): the "
        "client was closed, or its scheduler went away, and work sent through it cannot "
        "finish. Check that the scheduler is running, then send the work again with a new "
        "client."
    )


def cluster_workers_if_known(client: Client) -> dict[str, int] | None:
    """:func:`cluster_workers`, or None when the cluster failed to answer: the caller goes on
    without it, and ``run_windowed``, which asks again, says what failed."""
    try:
        return cluster_workers(client)
    except (*CLUSTER_FAILURES, ClusterError):
        return None


def on_loopback(address: str) -> bool:
    """Whether a worker's address is on this machine's loopback (or in this process)."""
    return urlsplit(address).hostname in _LOOPBACK_HOSTS or address.startswith("inproc://")


def workers_on_loopback(client: Client, workers: dict[str, int] | None = None) -> bool:
    """Whether every worker listens on this machine's loopback (a LocalCluster, say).

    ``workers`` is :func:`cluster_workers`' answer when the caller has it already.
    """
    if workers is None:
        workers = cluster_workers_if_known(client)
    if not workers:  # none, or the cluster did not answer
        return False
    return all(on_loopback(address) for address in workers)


def gathers_directly(client: Client, workers: dict[str, int] | None = None) -> bool:
    """Whether to fetch results from the workers themselves rather than through the scheduler.

    The client's own ``direct_to_workers`` when set. Otherwise directly when every worker
    listens on this machine's loopback (a LocalCluster, or ``dask worker`` on 127.0.0.1): the
    scheduler's relay would pass every result through it, which for a LocalCluster is this
    process again. A remote cluster's workers may be out of the client's reach, so by default
    their results come through the scheduler, as distributed does. ``workers`` as for
    :func:`workers_on_loopback`.
    """
    if client.direct_to_workers is not None:
        return bool(client.direct_to_workers)
    return workers_on_loopback(client, workers)


@contextlib.contextmanager
def cluster_client(
    client: Client | None = None,
    *,
    address: str | None = None,
    use_current: bool = True,
    start: bool = True,
    n_workers: int | None = None,
    **cluster_options: Any,
) -> Iterator[Any]:
    """The one place that decides which Dask cluster daskseg runs on.

    In order: ``client``; a new client of the scheduler at ``address``; the current default
    client (``use_current``); a new :func:`local_cluster` of ``n_workers`` with
    ``cluster_options`` (``start``); else None, for Dask's local scheduler. As highdicom does
    with what it opens, only what is started here is shut down on exit: a client given or found
    is left running. Every cluster resolved here gets daskseg's worker plugin for glibc's
    malloc (:mod:`daskseg._malloc`), so codecs run as fast on a cluster the user started.

    Called from a Dask task (a pipeline's ``client.map`` of one case a task), the current
    client is the worker's, and the task's thread secedes from the worker's pool while the
    work runs, as in distributed's ``worker_client()``: the task waits for tasks of its own,
    which would otherwise find every thread taken by tasks like it.
    """
    if client is not None:
        if not isinstance(client, Client):
            raise SegmentationTypeError(
                f"client must be a distributed.Client, not {type(client).__name__}."
            )
        _check_usable(client)
        register_malloc_plugin(client)
        with _seceded_if_in_task(client):
            yield client
        return
    if address is not None:
        with Client(address) as connected:
            register_malloc_plugin(connected)
            yield connected
        return
    if use_current:
        if _in_worker():
            from distributed import worker_client

            with worker_client() as current:
                register_malloc_plugin(current)
                yield current
            return
        try:
            current = default_client()
        except ValueError:  # no client exists in this process
            current = None
        if current is not None:
            _check_usable(current)
            register_malloc_plugin(current)
            yield current
            return
    if not start:
        yield None
        return
    with (
        _started_cluster(n_workers, **cluster_options) as cluster,
        Client(cluster, set_as_default=False) as own,
    ):
        register_malloc_plugin(own)
        yield own


def _check_usable(client: Client) -> None:
    """Refuse a client that cannot take work: closed, or asynchronous in its own event loop."""
    if client.status in ("closing", "closed", "failed"):
        raise closed_client_error(client)
    if client.asynchronous:
        import asyncio

        try:
            asyncio.get_running_loop()
        except RuntimeError:  # no event loop runs in this thread: its loop runs elsewhere
            return
        raise SegmentationTypeError(
            "The Dask client is asynchronous and this call comes from a coroutine: daskseg "
            "waits for its work, which would block the event loop that the client needs. Run "
            "the call in a thread, e.g. await asyncio.to_thread(write_segmentation, ...)."
        )


def _in_worker() -> bool:
    """Whether this code runs inside a task (or a thread of a task) on a Dask worker."""
    from distributed import get_worker

    try:
        get_worker()
    except ValueError:
        return False
    return True


@contextlib.contextmanager
def _seceded_if_in_task(client: Client) -> Iterator[None]:
    """Secede the task's thread from its worker's pool while ``client``, a client of the
    worker's own scheduler, runs work from inside a task (see :func:`cluster_client`)."""
    if not _in_worker():
        yield
        return
    from distributed import get_worker, worker_client

    if client.scheduler is None or client.scheduler.address != get_worker().scheduler.address:
        yield  # another cluster's client: this worker's threads are not needed
        return
    with worker_client():
        yield


@contextlib.contextmanager
def _started_cluster(n_workers: int | None, **cluster_options: Any) -> Iterator[LocalCluster]:
    """A :func:`local_cluster`, closed on leaving; also when interrupted while it starts.

    An exception inside LocalCluster's constructor (Ctrl-C as its workers start) leaves no
    object to close: its worker processes ran on until the interpreter exited, and then
    distributed's exit hook failed on the half-made cluster with a traceback. Whatever
    cluster appeared meanwhile is closed here.
    """
    from distributed.deploy.spec import SpecCluster

    before = set(SpecCluster._instances)
    try:
        cluster = local_cluster(n_workers, **cluster_options)
    except BaseException:
        for started in set(SpecCluster._instances) - before:
            with contextlib.suppress(Exception):
                started.close(timeout=10)
            # Half made, it may not close: keep distributed's exit hook away from it.
            SpecCluster._instances.discard(started)
        raise
    with cluster:
        yield cluster


class WorkerlessClock:
    """How long a cluster has had no workers, and whether that passed the allowed time.

    A scheduler without workers keeps tasks waiting forever (a cluster scaled to zero, workers
    that died without a nanny to restart them). Work waits up to the Dask configuration value
    ``daskseg.no-workers-timeout`` (60 s by default: nannies restart a killed worker in seconds,
    an adaptive cluster starts new ones) and then fails with a :class:`ClusterError`.
    """

    def __init__(self, client: Client) -> None:
        self.client = client
        self.timeout = parse_timedelta(dask.config.get("daskseg.no-workers-timeout", "60s"))
        self.threads: int | None = None  # worker threads at the last look, if it succeeded
        self.workers: frozenset[str] | None = None  # their addresses then
        self._since: float | None = None
        self._closed = False  # the client gave up on its scheduler

    def expired(self) -> bool:
        """Ask the scheduler for its workers (one round trip); True once none for too long, or
        once the client has closed (its scheduler went away and did not come back)."""
        try:
            workers = self.client.nthreads()
        except Exception:
            # While the client reconnects, its futures may still finish; once it has closed,
            # none of them ever will (their callbacks never come).
            self._closed = self.client.status not in REACHABLE_STATUSES
            return self._closed
        self.threads = sum(workers.values())
        self.workers = frozenset(workers)
        if workers:
            self._since = None
            return False
        now = time.monotonic()
        if self._since is None:
            self._since = now
        return now - self._since > self.timeout

    def error(self) -> ClusterError:
        if self._closed:
            return closed_client_error(self.client)
        return ClusterError(
            f"The Dask cluster has had no workers for {self.timeout:g} s, so its work cannot "
            "run. Start workers (or check why they stopped), or allow a longer wait with the "
            "Dask configuration value 'daskseg.no-workers-timeout'."
        )
