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
