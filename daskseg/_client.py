"""Which Dask cluster to run on: the caller's client, the current one, or a LocalCluster of our own."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from typing import Any

from distributed import Client, LocalCluster, default_client

from daskseg.errors import SegmentationTypeError

__all__ = ["cluster_client", "start_local_cluster"]


def start_local_cluster(n_workers: int | None = None, **options: Any) -> LocalCluster:
    """A LocalCluster sized for this machine: one single-threaded worker process per core.

    Codecs hold the GIL in places (pydicom's RLE path), so processes, not threads.
    """
    n_workers = n_workers or len(os.sched_getaffinity(0))
    options.setdefault("threads_per_worker", 1)
    options.setdefault("processes", True)
    options.setdefault("dashboard_address", ":0")
    return LocalCluster(n_workers=n_workers, **options)


@contextlib.contextmanager
def cluster_client(client: Client | None = None) -> Iterator[Client]:
    """Yield ``client``, else the current default client, else one of a new LocalCluster.

    Only a cluster started here is closed on exit.
    """
    if client is not None:
        if not isinstance(client, Client):
            raise SegmentationTypeError(
                f"client must be a distributed.Client, not {type(client).__name__}."
            )
        yield client
        return
    try:
        yield default_client()
        return
    except ValueError:  # no client exists in this process
        pass
    with start_local_cluster() as cluster, Client(cluster, set_as_default=False) as own:
        yield own
