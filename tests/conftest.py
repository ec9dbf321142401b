"""Shared fixtures: one real LocalCluster of worker processes per test session, and an in-process
cluster of threads per test module for the tests of logic."""

from __future__ import annotations

import gc
import logging
import pathlib

import pytest
from distributed import Client, LocalCluster

# distributed logs every worker start and stop at INFO: keep the test output readable.
logging.getLogger("distributed").setLevel(logging.ERROR)

TESTDATA = pathlib.Path(__file__).resolve().parents[1].parent / "shared" / "testdata"


@pytest.fixture
def earlier_garbage_collected(capsys):
    """asyncio reports a future of an earlier test that nobody awaited ("Future exception was
    never retrieved") on stderr when the garbage collector frees it, which may be during a
    command whose stderr a test reads: freed here first, and its report dropped."""
    gc.collect()
    capsys.readouterr()


@pytest.fixture(scope="session")
def testdata() -> pathlib.Path:
    """The folder of DICOM files made by other software; skips when it is absent."""
    if not TESTDATA.is_dir():
        pytest.skip(f"{TESTDATA} is absent (shared test data is only beside the repository)")
    return TESTDATA


@pytest.fixture(scope="session")
def orthanc(tmp_path_factory):
    """The DICOMweb root URL of a real Orthanc on 127.0.0.1, stopped after the session."""
    from _orthanc import orthanc_missing, run_orthanc

    reason = orthanc_missing()
    if reason:
        pytest.skip(reason)
    with run_orthanc(tmp_path_factory.mktemp("orthanc")) as root:
        yield root


@pytest.fixture(scope="session")
def outward_host():
    """This machine's address on its outward interface: workers listening there are, to
    daskseg, on another machine. Skips where there is none (no route out, say)."""
    import socket

    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        try:
            probe.connect(("192.0.2.1", 9))  # TEST-NET-1: a route is looked up, nothing sent
        except OSError:
            pytest.skip("this machine has no address besides its loopback")
        address = probe.getsockname()[0]
    if address.startswith("127."):
        pytest.skip("this machine has no address besides its loopback")
    return address


@pytest.fixture(scope="session")
def process_cluster():
    """Two single-threaded worker processes, as on CI's 2-core machine."""
    with LocalCluster(
        n_workers=2,
        threads_per_worker=1,
        processes=True,
        dashboard_address="127.0.0.1:0",
        memory_limit="4GiB",
    ) as cluster:
        yield cluster


@pytest.fixture(scope="session")
def dask_client(process_cluster):
    """A client of the session's process cluster."""
    with Client(process_cluster, set_as_default=False) as client:
        yield client


# Per module, not per session: an in-process cluster left running beside test_cluster.py's
# clusters (which kill and scale away workers on purpose) changed their timing in full runs.
@pytest.fixture(scope="module")
def thread_client():
    """A client of an in-process cluster of two threads: quick to start, same code paths."""
    with Client(processes=False, n_workers=1, threads_per_worker=2,
                dashboard_address="127.0.0.1:0", set_as_default=False) as client:
        yield client
