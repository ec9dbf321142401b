"""Counting a Dask client's gathers: each is a round trip that costs the client's CPU."""

from __future__ import annotations


def count_gathers(monkeypatch, client) -> list[int]:
    """The sizes of the client's gathers from now on, one entry a round trip."""
    gathers: list[int] = []
    gather = client.gather

    def counted_gather(futures, **options):
        gathers.append(len(futures))
        return gather(futures, **options)

    monkeypatch.setattr(client, "gather", counted_gather)
    return gathers
