"""DaskExecutor: a ``concurrent.futures.Executor`` whose calls run on a Dask cluster.

distributed's own ``Client.get_executor()`` sends one task per call; each costs the scheduler a
few milliseconds, more than encoding a frame, so highdicom given it runs slower than serially.
DaskExecutor sends calls in batched tasks, but keeps the contract of each call on its own:

- Batches are sized adaptively, as joblib's auto-batching does: a function never seen before
  goes one call per task; calls measured fast fill a batch up to about ``batch_duration``
  seconds of work; calls that turn out slow shrink their function's batches.
- Calls wait on the client until a worker thread is (about to be) free, so queued calls stay
  cancellable and memory on the cluster stays bounded however many calls are submitted.
- A call whose function, arguments or result cannot be pickled fails alone, as in a
  ``ProcessPoolExecutor``, not its batchmates: a batch that could not be sent is sent again
  one call a task (none of its calls ran), and a batch whose results could not be sent back
  together sends each on its own from its worker (each ran once).
- A batch whose worker died each time it ran it goes again one call a task, one at a time
  with nothing else of the executor's on the cluster (quarantined): distributed fails every
  task a dying worker held, those queued behind the killer too. So only the call that kills
  its process fails. A lone call failed so, or lost with its worker after its batch returned,
  while other tasks of the executor were on the cluster, is quarantined too before it is
  blamed. Calls back from a dead worker may have run: they stay running (not cancellable).
- On the worker, a batch runs in a thread that the task watches for a time budget. Once it is
  spent, the task returns the outcomes of the finished calls at once, hands back the calls not
  started (queued again on the client, cancellable again), and leaves a call still running to
  go on in its thread; its outcome is collected by a follow-up task on the same worker.

A call's future is a ``concurrent.futures.Future`` whose ``running()`` is true while its call is
on the cluster; ``cancel()`` refuses a call from then until it finishes or comes back unstarted.
"""

from __future__ import annotations

import contextvars
import inspect
import itertools
import logging
import numbers
import os
import pickle
import queue
import threading
import time
import uuid
import weakref
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Executor, Future
from concurrent.futures._base import PENDING
from dataclasses import dataclass, field
from typing import Any

import cloudpickle
import dask
from distributed import Client, default_client, get_worker
from distributed.protocol import pickle as dask_pickle
from distributed.scheduler import KilledWorker

from daskseg._client import (
    CLUSTER_FAILURES,
    REACHABLE_STATUSES,
    WorkerlessClock,
    cancel_quietly,
    local_cluster,
)
from daskseg._malloc import register_malloc_plugin
from daskseg.errors import ClusterError

__all__ = ["DaskExecutor"]

# A thread's next batch may wait on its worker behind calls measured to take at most this many
# batch durations: enough to hide the scheduler's round trip when calls slow down under load.
_FAST = 4

# ------------------------------------------------------------------------- on the workers

# Calls that outlived their batch's budget, by token, until a collecting task takes them. One
# dict per worker process; a worker that dies takes its entries with it (see _CallLost).
_RUNNING: dict[str, Future] = {}
_RUNNING_LOCK = threading.Lock()
# One set of permits per worker, not per process: workers of a cluster made with
# processes=False share this process, each with threads of its own.
_SLOTS: weakref.WeakKeyDictionary[Any, _Slots] = weakref.WeakKeyDictionary()


class _CallLost(Exception):
    """The worker that ran a call is gone (its collecting task ran elsewhere)."""


class _Sealed:
    """One call's result (or exception) that pickles on its own, in a batch's results.

    distributed sends a batch's results as one object, so one that cannot be pickled would
    fail the whole batch. A sealed one is pickled separately, as distributed would pickle it
    (pickle, else cloudpickle); when that fails it arrives as :class:`_Unpicklable`, which
    fails its own call only.
    """

    __slots__ = ("value",)

    def __init__(self, value: Any) -> None:
        self.value = value

    def __reduce_ex__(self, protocol: Any) -> tuple:
        # Buffers go out of band only where the enclosing pickle takes them (protocol 5);
        # distributed pickles some messages with a lower protocol.
        buffers: list | None = [] if isinstance(protocol, int) and protocol >= 5 else None
        try:
            data = _dumps(self.value, buffers)
        except Exception as error:
            return _Unpicklable, (_sendable(error),)
        return _unseal, (data, *(buffers or ()))


def _dumps(value: Any, buffers: list | None) -> bytes:
    """distributed's choice between pickle and cloudpickle, without its error log: by value
    what pickle would refer to in ``__main__`` or in a module registered to go by value.
    Buffers out of band into ``buffers`` unless it is None."""
    callback = None if buffers is None else buffers.append
    try:
        data = pickle.dumps(value, protocol=5, buffer_callback=callback)
        by_value = cloudpickle.list_registry_pickle_by_value()
        if b"__main__" not in data and not (
            by_value and getattr(inspect.getmodule(value), "__name__", None) in by_value
        ):
            return data
    except Exception:
        pass
    if buffers is not None:
        buffers.clear()
    return cloudpickle.dumps(value, protocol=5, buffer_callback=callback)


def _unseal(data: bytes, *buffers: Any) -> Any:
    try:
        return dask_pickle.loads(data, buffers=buffers)
    except Exception as error:
        # A value that pickles but does not load here (an exception whose __init__ takes
        # other arguments than it pickles): its own call fails, not the batch with it.
        return _Unpicklable(error)


def _sendable(error: BaseException) -> BaseException:
    """The pickling error itself, or a TypeError saying the same if it cannot be pickled."""
    try:
        _dumps(error, None)
    except Exception:
        return TypeError(f"{type(error).__name__}: {error}")
    return error


def _pickling_error(calls: list[_Call], error: Exception) -> Exception:
    """For a call alone that distributed could not send, pickle's own words about it
    ("cannot pickle '_thread.lock' object"), as a ProcessPoolExecutor gives them."""
    if len(calls) == 1 and calls[0].fn is not None:
        try:
            _dumps((calls[0].fn, calls[0].args, calls[0].kwargs), None)
        except Exception as own:
            return own
    return error


class _Unpicklable:
    """In place of a call's part that could not be pickled: the error, for its future."""

    __slots__ = ("error",)

    def __init__(self, error: BaseException) -> None:
        self.error = error


def _opened(part: Any) -> Any:
    """A sealed part as it arrived: unpickled by then, unless it never left this process."""
    return part.value if isinstance(part, _Sealed) else part


def _outcome(fn: Callable, args: tuple, kwargs: dict) -> tuple[bool, Any, float]:
    """Run one call: ``(True, result, seconds)`` or ``(False, exception, seconds)``."""
    start = time.perf_counter()
    try:
        return True, fn(*args, **kwargs), time.perf_counter() - start
    except BaseException as error:  # a call's failure belongs to its own future
        return False, error, time.perf_counter() - start


class _Slots:
    """A worker's permits to run a call: one per worker thread.

    A call that outlived its batch keeps running after its task returned, so without them a
    worker would run more calls at once than it has threads, which some libraries do not
    survive (highdicom's JPEG 2000 encoder crashes when two threads of a process run it).
    A call whose thread seceded from the worker's pool (``worker_client()``, ``secede()``) no
    longer holds its permit, as distributed no longer counts it: a call that waits there for
    calls of its own would otherwise wait forever for the permit it holds.
    """

    def __init__(self, threads: int, pool: Any) -> None:
        self._threads = threads
        self._pool_threads = getattr(pool, "_threads", None)  # distributed's pool's members
        self._holders: list[tuple[threading.Thread, bool]] = []  # (thread, in the pool)
        self._changed = threading.Condition()

    def _taken(self) -> int:
        members = self._pool_threads
        return sum(1 for thread, member in self._holders
                   if not (member and members is not None and thread not in members))

    def acquire(self, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        with self._changed:
            while self._taken() >= self._threads:
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._changed.wait(min(left, 0.005))  # a secession is not signalled: look again
            thread = threading.current_thread()
            members = self._pool_threads
            self._holders.append((thread, members is not None and thread in members))
            return True

    def release(self) -> None:
        thread = threading.current_thread()
        with self._changed:
            for i, (holder, _) in enumerate(self._holders):
                if holder is thread:
                    del self._holders[i]
                    break
            self._changed.notify()


def _slots() -> _Slots:
    """This worker's permits (see :class:`_Slots`)."""
    worker = get_worker()
    with _RUNNING_LOCK:
        slots = _SLOTS.get(worker)
        if slots is None:
            slots = _SLOTS[worker] = _Slots(worker.state.nthreads,
                                            worker.executors.get("default"))
        return slots


def _run_batch(
    calls: list[tuple[Callable, tuple, dict]], budget: float
) -> tuple[list, str | None, str | None]:
    """Run calls in order; return within about ``budget`` seconds whatever they take.

    Returns the outcomes of the calls that finished, and, when a call was still running at the
    end of the budget, a token for :func:`_collect` and this worker's address. Calls after the
    finished ones (and after the running one) were not started.
    """
    slots = _slots()
    if len(calls) == 1:  # no batchmate to hold back: run it here, however long it takes
        if not slots.acquire(timeout=budget):  # the worker's threads are all taken
            return [], None, None
        try:
            return [_outcome(*calls[0])], None, None
        finally:
            slots.release()
    lock = threading.Lock()
    outcomes: list = []
    state: dict[str, Any] = {"stop": False, "running": None}
    finished = threading.Event()

    def run() -> None:
        for call in calls:
            while not slots.acquire(timeout=0.005):
                if state["stop"]:
                    return
            with lock:
                if state["stop"]:
                    slots.release()
                    return
                slot = state["running"] = Future()
            try:
                outcome = _outcome(*call)
            finally:
                slots.release()
            slot.set_result(outcome)
            with lock:
                if state["stop"]:  # the task already handed this call to a collector
                    return
                outcomes.append(outcome)
                state["running"] = None
            del outcome
        finished.set()

    # In the task's context (distributed's worker and client context variables): get_worker()
    # and get_client() in a batched call answer as in a call alone on the task's thread.
    context = contextvars.copy_context()
    threading.Thread(target=context.run, args=(run,), name="DaskExecutor-batch",
                     daemon=True).start()
    finished.wait(budget)
    with lock:
        state["stop"] = True
        done, running = list(outcomes), state["running"]
        outcomes.clear()
    if running is None:
        return done, None, None
    token = uuid.uuid4().hex
    with _RUNNING_LOCK:
        _RUNNING[token] = running
    return done, token, get_worker().address


def _collect(token: str) -> tuple[bool, Any, float]:
    """Wait for the outcome of a call that outlived its batch, on the worker running it."""
    with _RUNNING_LOCK:
        slot = _RUNNING.pop(token, None)
    if slot is None:
        raise _CallLost(token)
    return slot.result()


def _sealed_outcomes(result: tuple[list, str | None, str | None]) -> tuple:
    """A batch's result that could not be sent back, on the worker that holds it, with each
    call's value (or exception) sealed: only one that cannot be pickled fails, and only its
    own call. (Sealing every result up front would pickle each twice where distributed
    pickles results with protocol 4, on its scheduler's connections: arrays copied again.)"""
    outcomes, token, address = result
    return [(ok, _Sealed(value), seconds) for ok, value, seconds in outcomes], token, address


def _run_chunk(fn: Callable, chunk: tuple[tuple, ...]) -> list:
    """Run ``fn`` over one chunk of ``map``'s argument tuples."""
    return [fn(*args) for args in chunk]


# ------------------------------------------------------------------------- on the client

_LIVE: weakref.WeakSet[DaskExecutor] = weakref.WeakSet()
_EXIT_HOOKED = False
_EXIT_LOCK = threading.Lock()


def _hook_exit() -> None:
    """Have the interpreter finish every executor's calls before it exits, as the stdlib's
    pools do ("will not exit until all pending futures are done executing"), also after
    ``shutdown(wait=False)``. threading's exit hooks run before ``atexit``'s, while clients and
    clusters still work; concurrent.futures hooks its pools there the same way."""
    global _EXIT_HOOKED
    with _EXIT_LOCK:
        if _EXIT_HOOKED:
            return
        register = getattr(threading, "_register_atexit", None)
        if register is None:  # pragma: no cover - CPython has had it since 3.9
            import atexit

            atexit.register(_finish_at_exit)
        else:
            register(_finish_at_exit)
        _EXIT_HOOKED = True


def _finish_at_exit() -> None:
    for executor in list(_LIVE):
        # Only in the process that made it: a forked child (a fork-based process pool's
        # worker) has a copy without the sender thread, and would wait for it forever.
        if executor._pid == os.getpid():
            executor._finish_at_exit()


#: How long the executor's sending thread waits with nothing to do before it lets go of the
#: executor, to see whether it was dropped.
_IDLE_LOOK_SECONDS = 0.5


def _send_loop(start: list[DaskExecutor], this: weakref.ref[DaskExecutor],
               finished: queue.SimpleQueue, owned_client: Client | None, owned_cluster: Any,
               closed: threading.Event) -> None:
    """The sending thread: batches and collecting tasks to the cluster, until the executor is
    shut down and drained, or dropped while idle; then what it started is closed.

    It holds the executor from the start (calls submitted to an executor dropped at once still
    run, as a process pool's do) and lets go of it only while it has nothing to do.
    """
    executor: DaskExecutor | None = start.pop()
    try:
        while executor is not None:
            work = executor._next_work(_IDLE_LOOK_SECONDS)
            if work is None:
                break
            what, item = work
            if what == "batch":
                executor._send_batch(item)
            elif what == "collect":
                executor._send_collect(*item)
            else:  # idle: only the weak reference is left while nothing is to be done
                del executor, work, item
                executor = this()
    finally:
        finished.put(None)  # every task is resolved: the results' thread may end
        if owned_client is not None:
            owned_client.close()
        if owned_cluster is not None:
            owned_cluster.close()
        closed.set()


def _resolve_loop(this: weakref.ref[DaskExecutor], finished: queue.SimpleQueue) -> None:
    """The results' thread: resolve each finished task's futures, run their callbacks."""
    while (done := finished.get()) is not None:
        executor = this()
        try:
            if executor is not None:  # it has work on the cluster: it cannot be gone
                executor._resolve(*done)
        except Exception:  # a bug here must not stop every later result: say it, go on
            logging.getLogger(__name__).exception("DaskExecutor could not resolve a task")
        del done, executor  # the task's result, until the next one comes


def _flatten(chunks: Iterator[list]) -> Iterator:
    """Yield the items of each chunk's result without keeping yielded items alive."""
    for chunk in chunks:
        chunk.reverse()
        while chunk:
            yield chunk.pop()


class _CallFuture(Future):
    """A stdlib future whose call may sit in a batch on the cluster, not yet started.

    While the call is on the cluster (``_sent``) it counts as running: ``cancel()`` fails, as
    for a call a ``ProcessPoolExecutor`` has put on its call queue. A call that comes back
    unstarted is pending again. ``cancel()`` also notifies waiters at once, so ``wait()`` and
    ``as_completed()`` see a cancelled queued call as done.
    """

    def __init__(self) -> None:
        super().__init__()
        self._sent = False
        self._call: _Call | None = None  # until resolved: a cancelled call frees its arguments

    def cancel(self) -> bool:
        with self._condition:
            if self._sent:
                return False
            if self.cancelled():
                return True
            if not super().cancel():
                return False
            self.set_running_or_notify_cancel()  # CANCELLED -> CANCELLED_AND_NOTIFIED
            call, self._call = self._call, None
        if call is not None:
            call.release()
        return True

    def running(self) -> bool:
        with self._condition:
            return super().running() or (self._sent and not self.done())

    def __repr__(self) -> str:
        with self._condition:
            if self._sent and self._state == PENDING:
                return f"<{type(self).__name__} at {id(self):#x} state=running>"
        return super().__repr__()


def _kind(fn: Callable) -> str:
    """Which function a call runs, for its duration estimate."""
    fn = getattr(fn, "func", fn)  # functools.partial
    name = getattr(fn, "__qualname__", None) or type(fn).__qualname__
    return f"{getattr(fn, '__module__', None)}.{name}"


def _payload(args: tuple, kwargs: dict) -> int:
    """Bytes of the arrays and byte strings among a call's arguments (what dominates pickling)."""
    return sum(_nbytes(value) for value in itertools.chain(args, kwargs.values()))


def _nbytes(value: Any) -> int:
    if isinstance(value, (bytes, bytearray)):
        return len(value)
    try:  # a property that raises or is not a count (a dask DataFrame's) counts as nothing
        nbytes = getattr(value, "nbytes", 0)
    except Exception:
        return 0
    return int(nbytes) if isinstance(nbytes, numbers.Integral) else 0


@dataclass(eq=False)
class _Call:
    future: _CallFuture
    fn: Callable | None  # None once released
    args: tuple
    kwargs: dict
    kind: str
    queued: float
    nbytes: int
    losses: int = 0  # times the worker running it died after its batch had returned
    alone: bool = False  # goes in a batch of its own: its batch could not be sent
    # Its worker died each time it ran it, but another call may have killed the worker (a
    # batchmate, a task beside it): it runs again with nothing else of the executor's on the
    # cluster, where its own deaths alone fail it.
    quarantined: bool = False

    def release(self) -> None:
        """Drop the function and arguments: nothing of a resolved or cancelled call stays."""
        self.fn, self.args, self.kwargs = None, (), {}


@dataclass(eq=False)
class _Flight:
    """A task on the cluster: a batch, or the collection of one call that outlived its batch."""

    remote: Any
    calls: list[_Call]
    fast: bool
    collect: bool = False
    sealed: bool = False  # a follow-up that sends back each call's value on its own
    sent: float = field(default_factory=time.monotonic)
    address: str | None = None  # a collection's: the worker that ran the call
    abandoned: bool = False  # a collection cancelled because that worker is gone
    shared: bool = False  # another task of the executor was on the cluster with it
    quarantine: bool = False  # holds a quarantined call: others wait (a while, at most)


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
    batch_duration : float
        Seconds of work, by the measured duration of earlier calls of the same function, that
        one task aims at. A batch's finished calls come back at the latest twice this long after
        the batch started, whatever its other calls take.
    batch_delay : float
        Seconds a call may wait for others to join its batch when a worker is free.
    batches_per_thread : int
        Batches of calls measured fast on the cluster at once, per worker thread (one batch
        starts as soon as the one before it ends). Other calls go one batch per thread.
    **cluster_options
        With neither ``client`` nor ``address`` and no current client, the executor starts
        :func:`daskseg.local_cluster` with these options, and closes it on :meth:`shutdown`.

    Notes
    -----
    A call whose batch cannot run fails with :class:`~daskseg.errors.ClusterError`: its worker
    was killed more often than ``distributed.scheduler.allowed-failures``, the scheduler went
    away, or the cluster had no worker for the Dask configuration value
    ``daskseg.no-workers-timeout`` (60 s by default; read when the executor is made).

    Where a ``ProcessPoolExecutor`` breaks when one of its processes dies, a Dask cluster
    runs the lost work again, as it runs any task again: a worker that dies takes the batch it
    ran, whose calls are then run again elsewhere (those that had finished too), up to
    ``allowed-failures`` times. Calls with side effects that must not happen twice should be
    idempotent; ``batch_size=1`` at least keeps a death from running finished batchmates again.

    As with the stdlib's executors, the interpreter does not exit before submitted calls are
    done, also after ``shutdown(wait=False)``.

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
        batch_size: int = 256,
        batch_bytes: int = 8 * 2**20,
        batch_duration: float = 0.05,
        batch_delay: float = 0.002,
        batches_per_thread: int = 2,
        **cluster_options: Any,
    ) -> None:
        if client is not None and address is not None:
            raise ValueError("Pass a client or an address, not both.")
        if batch_size < 1 or batches_per_thread < 1:
            raise ValueError("batch_size and batches_per_thread must be at least 1.")
        if batch_duration <= 0:
            raise ValueError(f"batch_duration must be positive, not {batch_duration!r}.")
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
        register_malloc_plugin(client)
        self.client = client
        self._batch_size = batch_size
        self._batch_bytes = batch_bytes
        self._batch_duration = batch_duration
        self._batch_delay = batch_delay
        self._batches_per_thread = batches_per_thread
        self._allowed_failures = dask.config.get("distributed.scheduler.allowed-failures")
        self._estimates: dict[str, float] = {}  # seconds per call, by function
        self._lock = threading.Condition()
        self._queue: deque[_Call] = deque()
        # Calls to run with nothing else of the executor's on the cluster (see _Call.quarantined)
        self._quarantined: deque[_Call] = deque()
        self._collects: deque[tuple[_Call, str, str]] = deque()  # (call, token, address)
        self._in_flight: dict[str, _Flight] = {}
        self._shutdown = False
        self._cancel_unstarted = False
        self._clock = WorkerlessClock(client)
        self._checked = -1.0
        self._closed = threading.Event()
        # Finished tasks are resolved, and the callers' done-callbacks run, on a thread of this
        # executor's own, as a process pool's on its management thread: distributed runs every
        # future's callbacks on one thread per process, where a callback that waits on another
        # DaskExecutor's call, or a slow one, held up every executor's results.
        self._finished: queue.SimpleQueue[tuple[Any, _Flight] | None] = queue.SimpleQueue()
        # The threads hold the executor only while it has work: one dropped without shutdown()
        # is collected once idle, and its threads end (and the cluster it started closes), as
        # a process pool's management thread notices its pool collected through a weakref.
        this = weakref.ref(self)
        self._resolver = threading.Thread(target=_resolve_loop, args=(this, self._finished),
                                          name="DaskExecutor-results", daemon=True)
        self._resolver.start()
        self._sender = threading.Thread(
            target=_send_loop,
            args=([self], this, self._finished, self._owned_client, self._owned_cluster,
                  self._closed),
            name="DaskExecutor", daemon=True)
        self._sender.start()
        self._pid = os.getpid()
        _LIVE.add(self)
        _hook_exit()

    # ----------------------------------------------------------------- stdlib API

    def submit(self, fn: Callable, /, *args: Any, **kwargs: Any) -> Future:
        """Schedule ``fn(*args, **kwargs)``; return a ``concurrent.futures.Future`` of it.

        Every keyword argument reaches ``fn``, including names that ``Client.submit`` takes
        (``key``, ``workers``, ``pure``...).
        """
        future = _CallFuture()
        call = _Call(future, fn, args, kwargs, _kind(fn), time.monotonic(), _payload(args, kwargs))
        future._call = call
        with self._lock:
            if self._shutdown:
                raise RuntimeError("cannot schedule new futures after shutdown")
            self._queue.append(call)
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

        ``chunksize`` calls go in one call each. Raises the exception of a call when its
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
        """Stop taking calls; optionally cancel those not started, and wait for the rest.

        With ``cancel_futures``, calls still queued are cancelled; calls on the cluster
        (``running()``) run, also those that come back unstarted from a batch. A client or
        cluster that the executor started is closed once all work is done.
        """
        with self._lock:
            self._shutdown = True
            if cancel_futures:
                self._cancel_unstarted = True
                # A call back from a worker that died may have run: it is running, not
                # cancelled, and runs again (a process pool does not cancel what it started).
                self._queue = deque(call for call in self._queue if not call.future.cancel())
            self._lock.notify_all()
        if wait:
            if threading.current_thread() is self._resolver:
                # A done-callback (run on that thread) cannot wait for the calls whose results
                # that thread delivers; a process pool's says the same ("cannot join current
                # thread"). The executor still shuts down once they are done.
                raise RuntimeError("shutdown(wait=True) cannot wait from a done-callback of "
                                   "one of this executor's futures; use wait=False there.")
            self._closed.wait()

    def _finish_at_exit(self) -> None:
        """Shut down and wait for every call; fail them if the client closed meanwhile."""
        with self._lock:
            self._shutdown = True
            self._lock.notify_all()
        while not self._closed.wait(0.5):
            if self.client.status in ("closing", "closed", "failed"):
                with self._lock:
                    self._fail_everything(ClusterError(
                        "The client closed while calls were on the cluster; the interpreter "
                        "is exiting."
                    ))
                    self._in_flight.clear()
                    self._lock.notify_all()

    # ----------------------------------------------------------------- sending

    def _estimate(self, call: _Call) -> float | None:
        return self._estimates.get(call.kind)

    def _learn(self, kind: str, seconds: float) -> None:
        """Update a function's duration estimate (a moving average, steady under noise)."""
        old = self._estimates.get(kind)
        self._estimates[kind] = seconds if old is None else 0.7 * old + 0.3 * seconds

    def _fast(self, calls: list[_Call]) -> bool:
        """Whether calls are measured short enough that a batch queued behind them on a worker
        thread starts soon (within a few ``batch_duration``)."""
        total = 0.0
        for call in calls:
            estimate = self._estimate(call)
            if estimate is None:  # never measured: not known to be fast
                return False
            total += estimate
        return total <= _FAST * self._batch_duration

    def _check_workers(self) -> None:
        """When the cluster has had no workers for too long, fail every call waiting on it
        (queued or on the cluster) with a :class:`ClusterError` rather than wait forever; the
        workers are asked about at most once a second. Called with the lock held."""
        now = time.monotonic()
        if now - self._checked > 1.0:
            self._checked = now
            if self._clock.expired():
                self._fail_everything(self._clock.error())
            else:
                self._abandon_orphaned_collections(now)

    def _abandon_orphaned_collections(self, now: float) -> None:
        """Cancel the collections pinned to a worker that is gone, their calls lost (run
        again). Sent when no worker was up, such a task stays 'no-worker' on the scheduler
        even after new workers join (distributed does not place a task whose only named
        worker is gone), and the executor waited for it forever. Called with the lock held."""
        workers = self._clock.workers
        if not workers:
            return
        orphans = [flight for flight in self._in_flight.values()
                   if flight.collect and not flight.abandoned and flight.address not in workers
                   and now - flight.sent > 1.0]
        for flight in orphans:
            flight.abandoned = True
        if orphans:
            cancel_quietly(self.client, [flight.remote for flight in orphans])

    def _capacity(self, head: _Call) -> int:
        """Tasks allowed on the cluster (after :meth:`_check_workers`).

        A thread's next batch goes before the current one ends only when both are of calls
        measured fast: then it starts within a few ``batch_duration``. Called with the lock
        held.
        """
        self._check_workers()
        # Scheduler unreachable: send anyway, the batch reports the error.
        threads = max(1, self._clock.threads or 1)
        # A fast flight still out after its own time and that of one fast flight before it
        # holds a call slower than its function's estimate: a batch sent now could wait behind
        # it on that worker, however long it takes, while another worker is idle.
        overdue = time.monotonic() - 2 * _FAST * self._batch_duration
        if self._fast([head]) and all(flight.fast and flight.sent > overdue
                                      for flight in self._in_flight.values()):
            return threads * self._batches_per_thread
        return threads

    def _fail_everything(self, error: ClusterError) -> None:
        """Fail the queued calls and the tasks on the cluster, and cancel those tasks."""
        calls = [call for call, _, _ in self._collects] + list(self._queue)
        calls += self._quarantined
        self._quarantined.clear()
        calls += [call for flight in self._in_flight.values() for call in flight.calls]
        self._queue.clear()
        self._collects.clear()
        remotes = [flight.remote for flight in self._in_flight.values()]
        self._fail(calls, error)
        if self.client.status not in REACHABLE_STATUSES:
            # A closed client's futures never call back: nothing else would end their flights
            # (and shutdown(wait=True) waits for them).
            self._in_flight.clear()
            self._lock.notify_all()
        elif remotes:  # the tasks' callbacks tidy up either way
            cancel_quietly(self.client, remotes)

    def _take_batch(self) -> list[_Call]:
        """Pop the next batch from the queue: about ``batch_duration`` of work by estimate."""
        batch: list[_Call] = []
        seconds = 0.0
        size = 0
        while self._queue and len(batch) < self._batch_size:
            call = self._queue[0]
            if call.future.cancelled():
                self._queue.popleft()
                continue
            estimate = self._estimate(call)
            cost = self._batch_duration if estimate is None else estimate
            if batch and (
                call.alone or batch[0].alone
                or seconds + cost > self._batch_duration or size + call.nbytes > self._batch_bytes
            ):
                break
            self._queue.popleft()
            with call.future._condition:
                if call.future.cancelled():
                    continue
                call.future._sent = True
            batch.append(call)
            seconds += cost
            size += call.nbytes
        return batch

    def _quarantine_holds(self) -> bool:
        """Whether other calls wait for a quarantined one: while the tasks on the cluster
        drain before it goes, and while it is there, each for a few batch durations at most.
        Longer, the cluster's other threads would idle behind a slow call, and a call that
        waits on a later one would wait forever. Called with the lock held."""
        since = time.monotonic() - (2 * self._batch_duration + 1.0)
        if self._quarantined and self._in_flight and self._quarantined[0].queued > since:
            return True
        return any(flight.quarantine and flight.sent > since
                   for flight in self._in_flight.values())

    def _next_work(self, idle_seconds: float | None = None) -> tuple[str, Any] | None:
        """Wait until a task can go; return it, or None when shut down and drained, or
        ``("idle", None)`` after ``idle_seconds`` with nothing to do."""
        with self._lock:
            while True:
                if self._collects:
                    return "collect", self._collects.popleft()
                while self._queue and self._queue[0].future.cancelled():
                    self._queue.popleft()
                while self._quarantined and self._quarantined[0].future.done():
                    self._quarantined.popleft()
                if self._quarantined and not self._in_flight:
                    return "batch", [self._quarantined.popleft()]
                # _capacity may fail everything (the cluster is gone), emptying the queue.
                if (self._queue and not self._quarantine_holds()
                        and len(self._in_flight) < self._capacity(self._queue[0])
                        and self._queue):
                    head = self._queue[0]
                    wait = head.queued + self._batch_delay - time.monotonic()
                    estimate = self._estimate(head)
                    queued = (
                        len(self._queue) * estimate if estimate is not None else float("inf")
                    )
                    if queued >= self._batch_duration or wait <= 0 or self._shutdown:
                        batch = self._take_batch()
                        if batch:
                            return "batch", batch
                        continue
                    self._lock.wait(wait)
                elif (self._shutdown and not self._queue and not self._quarantined
                      and not self._in_flight):
                    return None
                elif self._in_flight:  # calls only on the cluster: it may lose its workers
                    self._check_workers()
                    self._lock.wait(0.5)
                elif idle_seconds is not None:
                    # Nothing to do: hand back, so that the caller lets go of the executor.
                    if not self._lock.wait(idle_seconds) and not (
                            self._queue or self._quarantined or self._collects
                            or self._shutdown):
                        return "idle", None
                else:
                    self._lock.wait()

    def _submit(self, flight_calls: list[_Call], fast: bool, collect: bool, *args,
                sealed: bool = False, address: str | None = None, **options):
        key = f"daskexecutor-{'collect' if collect else 'batch'}-{uuid.uuid4().hex}"
        try:
            remote = self.client.submit(*args, key=key, pure=False, **options)
        except Exception as error:  # client closed, scheduler gone, a call not picklable
            if not collect and not sealed and self._unsent(flight_calls, error):
                return
            self._fail(flight_calls, error if collect else _pickling_error(flight_calls, error))
            return
        flight = _Flight(remote, flight_calls, fast, collect, sealed, address=address,
                         quarantine=any(call.quarantined for call in flight_calls))
        with self._lock:
            for other in self._in_flight.values():
                other.shared = flight.shared = True
            self._in_flight[key] = flight
        finished = self._finished  # the queue, not the executor (see __init__)
        remote.add_done_callback(lambda done, flight=flight: finished.put((done, flight)))

    def _send_batch(self, batch: list[_Call]) -> None:
        calls = [(call.fn, call.args, call.kwargs) for call in batch]
        self._submit(batch, self._fast(batch), False, _run_batch, calls, 2 * self._batch_duration)

    def _send_collect(self, call: _Call, token: str, address: str) -> None:
        # Pinned to the worker running the call, ahead of its batches; if that worker is gone
        # the task runs elsewhere and reports the call lost.
        self._submit([call], False, True, _collect, token, workers=[address],
                     allow_other_workers=True, priority=1, address=address)

    # ----------------------------------------------------------------- results

    def _resolve(self, remote: Any, flight: _Flight) -> None:
        """Complete callers' futures from a finished task, then release the task."""
        calls = flight.calls
        try:
            if flight.abandoned:  # its worker is gone: the call with it
                raise _CallLost(f"the worker {flight.address} that ran the call is gone")
            result = remote.result()
        except _CallLost as lost:
            self._lost(calls, lost, flight.shared)
        except BaseException as error:
            if (remote.status == "finished" and not flight.collect and not flight.sealed
                    and calls):
                # The calls ran, but their results could not be sent back (together): seal
                # each where they are, so that only an unpicklable one fails, in pickle's own
                # words (not distributed's, of the list of outcomes), a lone call's too.
                self._submit(list(calls), flight.fast, False, _sealed_outcomes, remote,
                             sealed=True)
            elif (isinstance(error, KilledWorker) and len(calls) > 1 and not flight.collect
                  and not flight.sealed):
                # The batch's worker died each time it ran it: one of its calls may kill its
                # process. Each goes again alone, with nothing else of the executor's on the
                # cluster (distributed fails the tasks queued behind a killer too), so that
                # only that one fails (a process pool keeps the results of the calls that
                # finished before such a crash). They may have run: they stay running.
                with self._lock:
                    for call in calls:
                        self._quarantine(call)
            elif (isinstance(error, KilledWorker) and len(calls) == 1 and flight.shared
                  and not flight.collect and not flight.sealed and not calls[0].quarantined):
                # A call alone in its task, but distributed fails every task on a worker that
                # dies, those waiting behind the one that killed it too: before blaming the
                # call, run it with nothing else of the executor's on the cluster.
                with self._lock:
                    self._quarantine(calls[0])
            elif flight.collect or flight.sealed or not self._unsent(calls, error):
                self._fail(calls, error)
        else:
            remote.release()
            outcomes, token, address = ([result], None, None) if flight.collect else result
            # Results must live only as long as the callers' futures (map does not keep yielded
            # results alive): drop every other reference to a result before it is handed over.
            pending = list(zip(calls, outcomes))
            rest = calls[len(outcomes):]
            outcomes.clear()
            del result
            pending.reverse()
            while pending:
                call, (ok, value, seconds) = pending.pop()
                value = _opened(value)
                if isinstance(value, _Unpicklable):  # the result could not be sent back
                    ok, value = False, value.error
                self._learn(call.kind, seconds)
                future = call.future
                call.release()
                future._call = None
                # Done already: failed when the cluster went without workers.
                if not future.done() and future.set_running_or_notify_cancel():
                    if ok:
                        future.set_result(value)
                    else:
                        future.set_exception(value)
                del call, value, future
            if rest:
                self._hand_back(rest, token, address)
        finally:
            calls.clear()
            remote.release()
            with self._lock:
                self._in_flight.pop(remote.key, None)
                self._lock.notify_all()

    def _hand_back(self, rest: list[_Call], token: str | None, address: str | None) -> None:
        """Collect the call that outlived its batch; queue the calls it did not start again."""
        with self._lock:
            if token is not None and address is not None:
                self._collects.append((rest.pop(0), token, address))
            self._queue_again(rest)

    def _queue_again(self, calls: list[_Call], alone: bool = False) -> None:
        """Calls not started, at the head of the queue again: pending (cancellable) again,
        but after ``shutdown(cancel_futures=True)`` still running, as they were then, and run
        (a running call is never cancelled; a process pool runs what it has put on its call
        queue). A quarantined call goes back to its own queue, still running: it may have run
        before. Called with the lock held."""
        for call in reversed(calls):
            if call.future.done():  # failed meanwhile: the cluster went without workers
                continue
            if call.quarantined:
                self._quarantined.appendleft(call)
                continue
            call.alone = call.alone or alone
            if not self._cancel_unstarted:
                with call.future._condition:
                    call.future._sent = False
            self._queue.appendleft(call)
        self._lock.notify_all()

    def _unsent(self, calls: list[_Call], error: BaseException) -> bool:
        """A batch failed before any of its calls ran, not for the cluster's sake (a function
        or argument that could not be pickled, or unpickled on the worker: ``_run_batch``
        keeps every call's own failure): queue its calls again, each to go alone, so that
        only the culprit fails. False when there is nothing to split."""
        if len(calls) < 2 or isinstance(error, CLUSTER_FAILURES):
            return False
        with self._lock:
            self._queue_again(calls, alone=True)
        return True

    def _quarantine(self, call: _Call) -> None:
        """Run a call that its worker's deaths may wrongly blame once more, with nothing else
        of the executor's on the cluster: there its own deaths alone fail it. It stays
        running (it may have run). Called with the lock held."""
        if call.future.done():
            return
        call.quarantined = call.alone = True
        call.losses = 0
        call.queued = time.monotonic()
        self._quarantined.append(call)
        self._lock.notify_all()

    def _lost(self, calls: list[_Call], lost: _CallLost, shared: bool) -> None:
        """The worker running a call died after its batch returned: run it again (it stays
        running), or, past ``allowed-failures`` such deaths, quarantine or fail it."""
        with self._lock:
            for call in calls:
                call.losses += 1
                if call.future.done():
                    continue
                if call.losses <= self._allowed_failures:
                    if call.quarantined:
                        self._quarantined.appendleft(call)
                    else:
                        self._queue.appendleft(call)
                elif shared and not call.quarantined:
                    # Another call on that worker may have ended it (a worker has threads).
                    self._quarantine(call)
                else:
                    self._fail([call], lost)
            self._lock.notify_all()

    @staticmethod
    def _fail(calls: list[_Call], error: BaseException) -> None:
        """Fail every call that the cluster could not run."""
        failure = error  # e.g. a call that cannot be pickled: the callers get it as it is
        if isinstance(error, (KilledWorker, _CallLost)) and len(calls) == 1:
            failure = ClusterError(
                f"The worker running this call died each time it ran it ({error}): the call "
                "may end its process (a crash in a library, memory beyond the worker's "
                "limit), or the cluster lost its workers meanwhile."
            )
            failure.__cause__ = error
        elif isinstance(error, (*CLUSTER_FAILURES, _CallLost)):
            failure = ClusterError(
                f"The Dask cluster lost a batch of {len(calls)} calls and could not recover it: "
                f"{error!r}. Check that the scheduler and workers are alive."
            )
            failure.__cause__ = error
        for call in calls:
            future = call.future
            call.release()
            future._call = None
            if not future.done():
                with future._condition:
                    future._sent = False
                    if future.set_running_or_notify_cancel():
                        future.set_exception(failure)
