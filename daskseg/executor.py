"""DaskExecutor: a ``concurrent.futures.Executor`` whose calls run on a Dask cluster.

distributed's own ``Client.get_executor()`` sends one task per call; each costs the scheduler a
few milliseconds, more than encoding a frame, so highdicom given it runs slower than serially.
DaskExecutor coalesces calls into batched tasks. Each call still gets its own stdlib ``Future``,
resolved on its own: a call that raises fails only its own future, never its neighbours.

Calls wait in a queue on the client until a batch is sent; a queued call can be cancelled. At
most a few batches per worker thread are on the cluster at once, so memory there stays bounded
however many calls are submitted.
"""

from __future__ import annotations

import contextlib
import itertools
import threading
import time
import uuid
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Executor, Future
from dataclasses import dataclass
from typing import Any

from distributed import Client, default_client

from daskseg._client import CLUSTER_FAILURES, WorkerlessClock, local_cluster
from daskseg.errors import ClusterError

__all__ = ["DaskExecutor"]


def _run_batch(calls: list[tuple[Callable, tuple, dict]]) -> list[tuple[bool, Any]]:
    """Run calls on a worker; each outcome is ``(True, result)`` or ``(False, exception)``."""
    outcomes = []
    for fn, args, kwargs in calls:
        try:
            outcomes.append((True, fn(*args, **kwargs)))
        except BaseException as error:  # a call's failure belongs to its own future
            outcomes.append((False, error))
    return outcomes


def _run_chunk(fn: Callable, chunk: tuple[tuple, ...]) -> list:
    """Run ``fn`` over one chunk of ``map``'s argument tuples."""
    return [fn(*args) for args in chunk]


def _flatten(chunks: Iterator[list]) -> Iterator:
    """Yield the items of each chunk's result without keeping yielded items alive."""
    for chunk in chunks:
        chunk.reverse()
        while chunk:
            yield chunk.pop()


@dataclass
class _Call:
    future: Future
    fn: Callable
    args: tuple
    kwargs: dict
    queued: float
    nbytes: int


def _payload(args: tuple, kwargs: dict) -> int:
    """Bytes of the arrays and byte strings among a call's arguments (what dominates pickling)."""
    return sum(
        value.nbytes if hasattr(value, "nbytes") else len(value)
        for value in itertools.chain(args, kwargs.values())
        if hasattr(value, "nbytes") or isinstance(value, (bytes, bytearray))
    )


class DaskExecutor(Executor):
    """A ``concurrent.futures.Executor`` that runs calls on a Dask cluster, in batches.

    Parameters
    ----------
    client : distributed.Client, optional
        The cluster's client. Not closed by :meth:`shutdown`.
    address : str, optional
        A scheduler's address (``"tcp://host:8786"``) to connect to instead; the client made for
        it is closed by :meth:`shutdown`, the cluster is not.
    batch_size : int
        Most calls sent in one task.
    batch_bytes : int
        Most bytes of array and bytes arguments sent in one task (a batch holds at least one
        call): big frames go in smaller batches, so transfers overlap with work.
    batch_delay : float
        Seconds a call may wait for others to join its batch when a worker is free.
    batches_per_thread : int
        Batches on the cluster at once, per worker thread.
    **cluster_options
        With neither ``client`` nor ``address`` and no current client, the executor starts
        :func:`daskseg.local_cluster` with these options, and closes it on :meth:`shutdown`.

    Notes
    -----
    A call whose batch cannot run fails with :class:`~daskseg.errors.ClusterError`: its worker
    was killed more often than ``distributed.scheduler.allowed-failures``, the scheduler went
    away, or the cluster had no worker for the Dask configuration value
    ``daskseg.no-workers-timeout`` (60 s by default; read when the executor is made).

    Examples
    --------
    >>> import highdicom as hd
    >>> with DaskExecutor() as executor:  # doctest: +SKIP
    ...     seg = hd.seg.Segmentation(..., workers=executor)
    """

    def __init__(
        self,
        client: Client | None = None,
        *,
        address: str | None = None,
        batch_size: int = 64,
        batch_bytes: int = 8 * 2**20,
        batch_delay: float = 0.002,
        batches_per_thread: int = 2,
        **cluster_options: Any,
    ) -> None:
        if client is not None and address is not None:
            raise ValueError("Pass a client or an address, not both.")
        if batch_size < 1 or batches_per_thread < 1:
            raise ValueError("batch_size and batches_per_thread must be at least 1.")
        self._owned_cluster = None
        self._owned_client = None
        if client is None and address is not None:
            client = self._owned_client = Client(address, set_as_default=False)
        elif client is None:
            try:
                client = default_client()
            except ValueError:  # no current client: start a cluster of our own
                self._owned_cluster = local_cluster(**cluster_options)
                client = self._owned_client = Client(self._owned_cluster, set_as_default=False)
        if not isinstance(client, Client):
            raise TypeError(f"client must be a distributed.Client, not {type(client).__name__}.")
        self.client = client
        self._batch_size = batch_size
        self._batch_bytes = batch_bytes
        self._batch_delay = batch_delay
        self._batches_per_thread = batches_per_thread
        self._lock = threading.Condition()
        self._queue: deque[_Call] = deque()
        self._in_flight: dict[str, tuple[Any, list[_Call]]] = {}  # key -> (dask future, batch)
        self._shutdown = False
        self._clock = WorkerlessClock(client)
        self._checked = -1.0
        self._closed = threading.Event()
        self._sender = threading.Thread(target=self._send_loop, name="DaskExecutor", daemon=True)
        self._sender.start()

    # ----------------------------------------------------------------- stdlib API

    def submit(self, fn: Callable, /, *args: Any, **kwargs: Any) -> Future:
        """Schedule ``fn(*args, **kwargs)``; return a ``concurrent.futures.Future`` of it.

        Every keyword argument reaches ``fn``, including names that ``Client.submit`` takes
        (``key``, ``workers``, ``pure``...).
        """
        future: Future = Future()
        with self._lock:
            if self._shutdown:
                raise RuntimeError("cannot schedule new futures after shutdown")
            self._queue.append(
                _Call(future, fn, args, kwargs, time.monotonic(), _payload(args, kwargs))
            )
            self._lock.notify_all()
        return future

    def map(
        self,
        fn: Callable,
        *iterables: Iterable,
        timeout: float | None = None,
        chunksize: int = 1,
    ) -> Iterator:
        """Ordered ``fn(*args)`` over the iterables, as ``ProcessPoolExecutor.map``.

        ``chunksize`` calls go in one task each. Raises the exception of a call when its
        result is reached, ``TimeoutError`` when ``timeout`` seconds pass from this call.
        """
        if chunksize < 1:
            raise ValueError("chunksize must be >= 1.")
        if chunksize == 1:
            return super().map(fn, *iterables, timeout=timeout)
        arguments = zip(*iterables)
        chunks = iter(lambda: tuple(itertools.islice(arguments, chunksize)), ())
        results = super().map(_run_chunk, itertools.repeat(fn), chunks, timeout=timeout)
        return _flatten(results)

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        """Stop taking calls; optionally cancel queued ones and wait for the rest.

        A client or cluster that the executor started is closed once all work is done.
        """
        with self._lock:
            self._shutdown = True
            if cancel_futures:
                for call in self._queue:
                    call.future.cancel()
                self._queue.clear()
            self._lock.notify_all()
        if wait:
            self._closed.wait()

    # ----------------------------------------------------------------- sending

    def _capacity(self) -> int:
        """Batches allowed on the cluster; the workers are asked about at most once a second.

        When the cluster has had no workers for too long, every call waiting on it fails with
        a :class:`ClusterError` rather than waiting forever. Called with the lock held.
        """
        now = time.monotonic()
        if now - self._checked > 1.0:
            self._checked = now
            if self._clock.expired():
                self._fail_everything(self._clock.error())
        # Scheduler unreachable: send anyway, the batch reports the error.
        return max(1, self._clock.threads or 1) * self._batches_per_thread

    def _fail_everything(self, error: ClusterError) -> None:
        """Fail the queued calls and the batches on the cluster, and cancel those batches."""
        for call in self._queue:
            if call.future.set_running_or_notify_cancel():
                call.future.set_exception(error)
        self._queue.clear()
        for _, batch in self._in_flight.values():
            self._fail(batch, error)
        if self._in_flight:
            with contextlib.suppress(Exception):  # the batches' callbacks tidy up either way
                self.client.cancel([remote for remote, _ in self._in_flight.values()])

    def _next_batch(self) -> list[_Call] | None:
        """Wait until a batch can go; return it, or None when shut down and drained."""
        with self._lock:
            while True:
                capacity = self._capacity() if self._queue or self._in_flight else 0
                if self._queue and len(self._in_flight) < capacity:
                    wait = self._queue[0].queued + self._batch_delay - time.monotonic()
                    if len(self._queue) >= self._batch_size or wait <= 0 or self._shutdown:
                        batch: list[_Call] = []
                        size = 0
                        while (
                            self._queue
                            and len(batch) < self._batch_size
                            and (not batch or size + self._queue[0].nbytes <= self._batch_bytes)
                        ):
                            call = self._queue.popleft()
                            size += call.nbytes
                            # A cancelled call is dropped; the rest can no longer be cancelled.
                            if call.future.set_running_or_notify_cancel():
                                batch.append(call)
                        if batch:
                            return batch
                        continue
                    self._lock.wait(wait)
                elif self._shutdown and not self._queue and not self._in_flight:
                    return None
                else:
                    self._lock.wait(0.5 if self._in_flight else None)

    def _send_loop(self) -> None:
        try:
            while (batch := self._next_batch()) is not None:
                key = f"daskexecutor-batch-{uuid.uuid4().hex}"
                try:
                    remote = self.client.submit(
                        _run_batch,
                        [(call.fn, call.args, call.kwargs) for call in batch],
                        key=key,
                        pure=False,
                    )
                except Exception as error:  # client closed, scheduler gone
                    self._fail(batch, error)
                    continue
                with self._lock:
                    self._in_flight[key] = (remote, batch)
                remote.add_done_callback(lambda done, batch=batch: self._resolve(done, batch))
        finally:
            if self._owned_client is not None:
                self._owned_client.close()
            if self._owned_cluster is not None:
                self._owned_cluster.close()
            self._closed.set()

    def _resolve(self, remote: Any, batch: list[_Call]) -> None:
        """Complete each caller's future from a finished batch, then release the batch."""
        key = remote.key
        try:
            outcomes = remote.result()
        except BaseException as error:
            self._fail(batch, error)
            batch.clear()
        else:
            remote.release()
            # Results must live only as long as the callers' futures (map does not keep yielded
            # results alive): drop every other reference to a result before it is handed over.
            # The done callback's closure holds ``batch``, so it is emptied too.
            pending = list(zip(batch, outcomes))
            batch.clear()
            outcomes.clear()
            pending.reverse()
            while pending:
                call, (ok, value) = pending.pop()
                if ok:
                    call.future.set_result(value)
                else:
                    call.future.set_exception(value)
                del call, value
        finally:
            remote.release()
            with self._lock:
                self._in_flight.pop(key, None)
                self._lock.notify_all()

    @staticmethod
    def _fail(batch: list[_Call], error: BaseException) -> None:
        """Fail every call of a batch that the cluster could not run."""
        failure = error  # e.g. a call that cannot be pickled: the callers get it as it is
        if isinstance(error, CLUSTER_FAILURES):
            failure = ClusterError(
                f"The Dask cluster lost a batch of {len(batch)} calls and could not recover it: "
                f"{error!r}. Check that the scheduler and workers are alive."
            )
            failure.__cause__ = error
        for call in batch:
            if not call.future.done():
                call.future.set_exception(failure)
