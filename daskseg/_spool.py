"""Encoding on the cluster: one task per block of whole tiles, results spooled as they arrive.

Blocks map to :func:`daskseg.encode.encode_chunk` on the workers, a bounded window of tasks in
flight; each result is appended to a spool file next to the destination, in whatever order the
workers finish, and read back in file order by ``_file``.
"""

from __future__ import annotations

import contextlib
import functools
import math
from concurrent.futures import Future
import os
import pathlib
import tempfile
import uuid
from collections.abc import Iterator
from typing import Any

import dask
import dask.array as da
import numpy as np
from distributed import Client

from daskseg._client import cluster_client
from daskseg._progress import progress_bar
from daskseg._tasks import block_tasks, run_windowed
from daskseg.encode import BlockResult, encode_chunk, encode_numpy_block
from daskseg.plan import FrameSpec

__all__ = [
    "Spool", "encode_blocks", "encode_tasks", "encoded_frames", "numpy_block_task",
    "numpy_encode_tasks",
]


class Spool:
    """Encoded frames as they arrive, in any order, in a temporary file beside the output."""

    def __init__(self, folder: pathlib.Path, name: str, shape: tuple[int, int, int]) -> None:
        handle, self.path = tempfile.mkstemp(prefix=f".{name}.", suffix=".spool", dir=folder)
        self.file = os.fdopen(handle, "w+b", buffering=0)
        self.offsets = np.full(shape, -1, dtype=np.int64)
        self.lengths = np.full(shape, -1, dtype=np.int64)
        self.size = 0

    def _write(self, data: bytes | memoryview) -> None:
        # An unbuffered file may write less than asked: write the rest.
        view = memoryview(data).cast("B")
        while view:
            view = view[self.file.write(view):]

    def add(self, channel: int, tile_row: int, tile_column: int, data: bytes) -> None:
        self._write(data)
        self.offsets[channel, tile_row, tile_column] = self.size
        self.lengths[channel, tile_row, tile_column] = len(data)
        self.size += len(data)

    def add_block(self, positions: np.ndarray, lengths: np.ndarray, data: np.ndarray) -> None:
        """Frames at ``positions`` (channel, tile row, tile column) stored one after another."""
        self._write(data.data)
        where = tuple(positions.T)
        self.offsets[where] = self.size + np.cumsum(lengths) - lengths
        self.lengths[where] = lengths
        self.size += int(data.size)

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


def numpy_encode_tasks(
    mask: np.ndarray, rows: tuple[int, ...], columns: tuple[int, ...], spec: FrameSpec
) -> list[tuple[int, Any]]:
    """As :func:`encode_tasks`, for a mask in memory cut into blocks of ``rows`` x ``columns``."""
    tasks = []
    row = 0
    for n_rows in rows:
        column = 0
        for n_columns in columns:
            tasks.append(numpy_block_task(
                mask[row : row + n_rows, column : column + n_columns], spec,
                row // spec.tile_rows, column // spec.tile_columns,
            ))
            column += n_columns
        row += n_rows
    return tasks


def numpy_block_task(
    block: np.ndarray, spec: FrameSpec, tile_row: int, tile_column: int,
    shape: tuple[int, ...] | None = None,
) -> tuple[int, Any]:
    """The encode task of one block of whole tiles in memory, and its frame count.

    The task carries only the block's pixels, and no Dask array: a worker then imports numpy,
    the codec and ``daskseg.encode`` (not this module), not ``dask.array`` (25 MB in every
    worker). The
    block is reshaped to ``shape`` on the worker, when given: reshaping a view here would copy
    it, and every task is made before the first runs.
    """
    task = dask.delayed(functools.partial(encode_numpy_block, spec, shape), pure=False)(
        block, tile_row, tile_column,
        dask_key_name=f"encode-frames-{uuid.uuid4().hex}-{tile_row}-{tile_column}",
    )
    rows, columns = shape[:2] if shape is not None else block.shape[:2]
    n_frames = (math.ceil(rows / spec.tile_rows)
                * math.ceil(columns / spec.tile_columns) * spec.n_channels)
    return n_frames, task


def encode_blocks(
    client: Client,
    tasks: list[tuple[int, Any]],
    spool: Spool,
    tile_nonempty: np.ndarray,
    bar: Any,
    meanwhile: Future | None = None,
) -> bool:
    """Run the block tasks a bounded window at a time; spool their frames. Returns overlap.

    ``meanwhile`` is work done on the client while the blocks encode (the header); its
    exception stops the encoding as soon as a block comes back after it failed.
    """
    overlap = False
    delayed = [task for _, task in tasks]
    for index, encoded in run_windowed(client, delayed, "encode a block of the mask"):
        if meanwhile is not None and meanwhile.done() and meanwhile.exception() is not None:
            meanwhile.result()  # raises it; run_windowed cancels the blocks still in flight
        result: BlockResult = encoded[0, 0]
        rows, columns = result.tile_nonempty.shape
        tile_nonempty[
            result.tile_row : result.tile_row + rows,
            result.tile_column : result.tile_column + columns,
        ] = result.tile_nonempty
        overlap |= result.overlap
        spool.add_block(result.positions, result.lengths, result.data)
        bar.update(tasks[index][0])
    return overlap


@contextlib.contextmanager
def encoded_frames(
    client: Client | None,
    tasks: list[tuple[int, Any]],
    destination: pathlib.Path,
    shape: tuple[int, int, int],
    progress: bool,
    meanwhile: Future | None = None,
) -> Iterator[tuple[Spool, np.ndarray, bool]]:
    """Encode every block on the cluster into a spool beside ``destination``.

    Yields the spool (removed on leaving), which tiles (``shape[1:]``) hold a non-zero pixel,
    and whether segments overlap. ``shape`` is (channels, tile rows, tile columns). A failure
    of ``meanwhile`` (see :func:`encode_blocks`) stops the encoding with its exception.
    """
    spool = Spool(destination.parent, destination.name, shape)
    try:
        tile_nonempty = np.zeros(shape[1:], dtype=bool)
        with cluster_client(client) as dask_client, progress_bar(
            sum(n for n, _ in tasks), "encoding frames", enabled=progress, client=dask_client,
        ) as bar:
            overlap = encode_blocks(dask_client, tasks, spool, tile_nonempty, bar, meanwhile)
        yield spool, tile_nonempty, overlap
    finally:
        spool.close()
