"""Which cluster daskseg runs on, and that only what it started is shut down."""

from __future__ import annotations

import pytest
from distributed import Client

from daskseg import SegmentationTypeError
from daskseg._client import cluster_client


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
