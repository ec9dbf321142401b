"""Encoding on the cluster: one task per block of whole tiles, results spooled as they arrive.

Blocks map to :func:`daskseg.encode.encode_chunk` on the workers, a bounded window of tasks in
flight; each result is appended to a spool file next to the destination, in whatever order the
workers finish, and read back in file order by ``_file``.
"""

from __future__ import annotations

import contextlib
import math
import os
import pathlib
import tempfile
from collections.abc import Iterator
from typing import Any

import dask
import dask.array as da
import numpy as np
from distributed import Client

from daskseg._client import cluster_client
from daskseg._progress import progress_bar
from daskseg._tasks import block_tasks, run_windowed
from daskseg.encode import BlockResult, encode_chunk
from daskseg.plan import FrameSpec

__all__ = ["Spool", "encode_blocks", "encode_tasks", "encoded_frames"]


class Spool:
    """Encoded frames as they arrive, in any order, in a temporary file beside the output."""

    def __init__(self, folder: pathlib.Path, name: str, shape: tuple[int, int, int]) -> None:
        handle, self.path = tempfile.mkstemp(prefix=f".{name}.", suffix=".spool", dir=folder)
        self.file = os.fdopen(handle, "w+b", buffering=0)
        self.offsets = np.full(shape, -1, dtype=np.int64)
        self.lengths = np.full(shape, -1, dtype=np.int64)
        self.size = 0

    def add(self, channel: int, tile_row: int, tile_column: int, data: bytes) -> None:
        self.file.write(data)
        self.offsets[channel, tile_row, tile_column] = self.size
        self.lengths[channel, tile_row, tile_column] = len(data)
        self.size += len(data)

    def read(self, channel: int, tile_row: int, tile_column: int) -> bytes:
        return os.pread(
            self.file.fileno(),
            int(self.lengths[channel, tile_row, tile_column]),
            int(self.offsets[channel, tile_row, tile_column]),
        )

    def close(self) -> None:
        self.file.close()
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.path)


def encode_tasks(mask: da.Array, spec: FrameSpec) -> list[tuple[int, Any]]:
    """One delayed encode task per block (fused with the block's read), and its frame count."""
    n_row_blocks, n_column_blocks = len(mask.chunks[0]), len(mask.chunks[1])
    encoded = mask.map_blocks(
        encode_chunk,
        spec,
        dtype=object,
        chunks=((1,) * n_row_blocks, (1,) * n_column_blocks),
        drop_axis=[2] if mask.ndim == 3 else [],
        meta=np.empty((0, 0), dtype=object),
        name=f"encode-frames-{dask.base.tokenize(mask.name, spec)}",
    )
    blocks = block_tasks(encoded)
    tasks = []
    for i, rows in enumerate(mask.chunks[0]):
        for j, columns in enumerate(mask.chunks[1]):
            n_frames = (
                math.ceil(rows / spec.tile_rows)
                * math.ceil(columns / spec.tile_columns)
                * spec.n_channels
            )
            tasks.append((n_frames, blocks[i, j]))
    return tasks


def encode_blocks(
    client: Client,
    tasks: list[tuple[int, Any]],
    spool: Spool,
    tile_nonempty: np.ndarray,
    bar: Any,
) -> bool:
    """Run the block tasks a bounded window at a time; spool their frames. Returns overlap."""
    overlap = False
    delayed = [task for _, task in tasks]
    for index, encoded in run_windowed(client, delayed, "encode a block of the mask"):
        result: BlockResult = encoded[0, 0]
        rows, columns = result.tile_nonempty.shape
        tile_nonempty[
            result.tile_row : result.tile_row + rows,
            result.tile_column : result.tile_column + columns,
        ] = result.tile_nonempty
        overlap |= result.overlap
        for channel, tile_row, tile_column, data in result.frames:
            spool.add(channel, tile_row, tile_column, data)
        bar.update(tasks[index][0])
    return overlap


@contextlib.contextmanager
def encoded_frames(
    client: Client | None,
    tasks: list[tuple[int, Any]],
    destination: pathlib.Path,
    shape: tuple[int, int, int],
    progress: bool,
) -> Iterator[tuple[Spool, np.ndarray, bool]]:
    """Encode every block on the cluster into a spool beside ``destination``.

    Yields the spool (removed on leaving), which tiles (``shape[1:]``) hold a non-zero pixel,
    and whether segments overlap. ``shape`` is (channels, tile rows, tile columns).
    """
    spool = Spool(destination.parent, destination.name, shape)
    try:
        tile_nonempty = np.zeros(shape[1:], dtype=bool)
        with cluster_client(client) as dask_client, progress_bar(
            sum(n for n, _ in tasks), "encoding frames", enabled=progress, client=dask_client,
        ) as bar:
            overlap = encode_blocks(dask_client, tasks, spool, tile_nonempty, bar)
        yield spool, tile_nonempty, overlap
    finally:
        spool.close()
