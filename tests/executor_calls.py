"""Calls for the executor tests, in a module light to import: process pools and Dask workers
import it to unpickle them."""

from __future__ import annotations

import time


def mul(x, y):
    return x * y


def sleep_and_raise(seconds):
    time.sleep(seconds)
    raise Exception("this is an exception")


class MyObject:
    def my_method(self):
        pass


def make_dummy_object(_):
    return MyObject()


def append_line(path, value, seconds=0.0):
    """Append ``value`` to a file after ``seconds``: a side effect counted by the caller."""
    time.sleep(seconds)
    with open(path, "a") as file:
        file.write(f"{value}\n")
    return value


def wait_for_file(path, seconds=60.0):
    """Return once ``path`` exists (or after ``seconds``): a call as slow as the test wants."""
    import os

    deadline = time.monotonic() + seconds
    while not os.path.exists(path) and time.monotonic() < deadline:
        time.sleep(0.01)
    return os.path.exists(path)


def lock_on(value, bad):
    """A result that cannot be pickled for ``bad``, ``value`` otherwise."""
    import threading

    return threading.Lock() if value == bad else value


def refuse_to_load():
    raise ValueError("this argument cannot be unpickled here")


class LoadsNowhere:
    """An argument that pickles but cannot be unpickled (a class missing where it lands)."""

    def __reduce__(self):
        return refuse_to_load, ()


class TwoArgError(Exception):
    """An exception that pickles but does not load: pickle calls it with ``args`` alone."""

    def __init__(self, code, detail):
        super().__init__(f"{code}: {detail}")
        self.code, self.detail = code, detail


def times_ten_or_raise(value, bad):
    if value == bad:
        raise TwoArgError(value, "bad")
    return 10 * value


def worker_address(_):
    """The address of the worker running the call (distributed.get_worker)."""
    from distributed import get_worker

    return get_worker().address


def wait_for_one_other(marker_folder, index, seconds=20.0):
    """Mark this call as started, then wait for another call's mark: True when both ran at once."""
    import os

    open(os.path.join(marker_folder, str(index)), "w").close()
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if len(os.listdir(marker_folder)) >= 2:
            return True
        time.sleep(0.01)
    return False


def submit_nested(marker_folder, index):
    """Wait until another such call runs too, then run a call of a DaskExecutor of its own
    through ``worker_client()``, which gives the worker's thread back to Dask meanwhile."""
    from distributed import worker_client

    from daskseg import DaskExecutor

    both = wait_for_one_other(marker_folder, index)
    with worker_client() as client:
        inner = DaskExecutor(client)
        try:
            return both, inner.submit(mul, index, 10).result(timeout=30)
        finally:
            inner.shutdown(wait=False)
