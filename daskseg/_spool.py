"""Encoding on the cluster: one task per block of whole tiles, results spooled as they arrive.

Blocks map to :func:`daskseg.encode.encode_chunk` on the workers, a bounded window of tasks in
flight. A worker on this machine appends its frames to a spool file of its own next to the
destination and sends back where they are; others send the frames, appended to the client's
spool file. Both in whatever order the workers finish, read back in file order by ``_file``.
"""

from __future__ import annotations

import contextlib
import functools
import math
import os
import pathlib
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

import dask
import dask.array as da
import numpy as np
from distributed import Client

from daskseg._client import cluster_client, cluster_workers_if_known, on_loopback
from daskseg._pack import pack_block, unpacked
from daskseg._progress import progress_bar
from daskseg._tasks import DataTask, block_tasks, run_windowed
from daskseg.encode import (
    BlockResult,
    encode_chunk,
    encode_numpy_block,
    worker_spool_name,
    write_all,
)
from daskseg.errors import SegmentationInputError
from daskseg.plan import FrameSpec

__all__ = [
    "Meanwhile", "Spool", "encode_blocks", "encode_tasks", "encoded_frames", "numpy_block_task",
    "create_new_file", "new_file_beside", "numpy_encode_tasks", "spool_prefix", "loopback_workers",
]


class Spool:
    """Encoded frames as they arrive, in any order, in temporary files beside the output.

    Frames sent back to the client are appended to the spool's own file. Workers on this
    machine append theirs to files of their own, prepared here (:meth:`prepare_workers`) under
    ``worker_prefix``, and send back only where they put them. Every file is removed on
    :meth:`close`.
    """

    def __init__(self, folder: pathlib.Path, name: str, shape: tuple[int, int, int],
                 worker_prefix: str | None = None) -> None:
        self.offsets = np.full(shape, -1, dtype=np.int64)
        self.lengths = np.full(shape, -1, dtype=np.int64)
        self.source = np.zeros(shape, dtype=np.int32)  # index in .sources of each frame's file
        self.size = 0
        self.worker_prefix = worker_prefix
        self._worker_files: dict[str, int] = {}  # base name -> index in .sources
        self._prepared: list[str] = []  # the workers' files, listed before they are made
        self.folder, self.name = folder, name
        self.path: pathlib.Path | None = None
        self.sources: list[int] = []  # descriptors to read frames from; the spool's own first

    def open(self) -> None:
        """Create the spool's own file.

        Called inside the ``try`` whose ``finally`` calls :meth:`close`: made in the
        constructor, the file was left behind by an interruption that came as it returned.
        """
        try:
            handle, path = new_file_beside(self.folder / self.name, ".spool", 0o600)
        except FileExistsError:
            raise
        except OSError as error:  # a folder that refuses new files (a read-only mount)
            raise SegmentationInputError(
                f"Cannot create a file in the destination folder {self.folder}: "
                f"{error.strerror}. Choose a folder where this user can create files."
            ) from error
        self.path, self.sources = path, [handle]  # no signal's exception between these

    def prepare_workers(self, addresses: list[str]) -> None:
        """Create an empty spool file for each of these workers (which then write to it)."""
        assert self.worker_prefix is not None
        for address in addresses:
            path = worker_spool_name(self.worker_prefix, address)
            self._prepared.append(path)  # first: close() removes it whatever comes next
            fd = create_new_file(path, 0o600)
            self._worker_files[os.path.basename(path)] = len(self.sources)
            self.sources.append(fd)

    def add_block(self, result: BlockResult) -> None:
        """A block's frames (at ``result.positions``): sent back, or in a worker's file."""
        where = tuple(result.positions.T)
        starts = np.cumsum(result.lengths) - result.lengths
        if result.spooled is not None:
            name, offset = result.spooled
            if name not in self._worker_files:
                raise RuntimeError(f"A worker spooled frames to {name!r}, not prepared here.")
            self.source[where] = self._worker_files[name]
            self.offsets[where] = offset + starts
        else:
            data: np.ndarray = unpacked(result.data)
            write_all(self.sources[0], data.data)
            self.source[where] = 0
            self.offsets[where] = self.size + starts
            self.size += int(data.size)
        self.lengths[where] = result.lengths

    def read(self, channel: int, tile_row: int, tile_column: int) -> bytes:
        return os.pread(
            self.sources[self.source[channel, tile_row, tile_column]],
            int(self.lengths[channel, tile_row, tile_column]),
            int(self.offsets[channel, tile_row, tile_column]),
        )

    def close(self) -> None:
        """Close and remove every file of the spool (any of them may not have been made).

        A signal's exception (Ctrl-C) that comes meanwhile is raised once every file is
        closed and removed: raised midway, it left the files of the spool beside the SEG.
        """
        interrupted: BaseException | None = None
        while self.sources or self._prepared or self.path is not None:
            try:
                self._close_some()
            except BaseException as error:  # raised below, once all is done
                interrupted = interrupted or error
        if interrupted is not None:
            raise interrupted

    def _close_some(self) -> None:
        """Close and remove what is left, each file taken off its list as it is done (so that
        it runs again after an interruption: a descriptor before it is closed, which is never
        closed twice; a path after it is removed, which may be removed twice)."""
        while self.sources:
            os.close(self.sources.pop())
        while self._prepared or self.path is not None:
            path = self._prepared[-1] if self._prepared else self.path
            # Gone already, or the folder was made read-only or removed under the write: the
            # error that stopped the write is the one to see, not this one about a hidden file.
            with contextlib.suppress(OSError):
                os.unlink(path)  # type: ignore[arg-type]
            if self._prepared:
                self._prepared.pop()
            else:
                self.path = None


def create_new_file(path: str | os.PathLike[str], mode: int) -> int:
    """Create the file ``path``, which must not exist, for reading and writing: its descriptor.

    An exception from a signal's handler (Ctrl-C, or SIGTERM in the CLI) can come right after
    the file is made, before its descriptor reaches the caller, who could then not remove it:
    the file is removed here. No one else made it: ``O_EXCL`` and a name of our own.
    """
    flags = os.O_RDWR | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0)
    try:
        return os.open(path, flags, mode)
    except OSError:
        raise  # nothing was made (FileExistsError: someone else's)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(path)
        raise


def new_file_beside(destination: pathlib.Path, suffix: str, mode: int) -> tuple[int, pathlib.Path]:
    """A new file of a hidden name of its own beside ``destination``: its descriptor and path.

    Made by :func:`create_new_file`, with ``mode`` less the umask.
    """
    for _ in range(100):
        path = destination.parent / f".{destination.name}.{uuid.uuid4().hex[:12]}{suffix}"
        try:
            return create_new_file(path, mode), path
        except FileExistsError:
            continue
    raise FileExistsError(f"No free temporary name beside {destination}.")


def spool_prefix(destination: pathlib.Path) -> str:
    """A new prefix for the workers' spool files of a write to ``destination``."""
    return str(destination.parent / f".{destination.name}.{uuid.uuid4().hex[:16]}.")


def loopback_workers(workers: dict[str, int]) -> list[str]:
    """The workers that may write spool files beside the destination: those on loopback.

    A remote worker's disk is not ours. A worker on loopback that does not see the folder
    (another container's filesystem) or cannot write there finds no spool file of its own,
    since a worker only opens the file the writer created (:func:`daskseg.encode.spool_block`),
    and sends its frames back instead.
    """
    return [address for address in workers if on_loopback(address)]


def encode_tasks(
    mask: da.Array, spec: FrameSpec, spool_prefix: str | None = None
) -> list[tuple[int, Any]]:
    """One delayed encode task per block (fused with the block's read), and its frame count."""
    n_row_blocks, n_column_blocks = len(mask.chunks[0]), len(mask.chunks[1])
    encoded = mask.map_blocks(
        encode_chunk,
        spec,
        spool_prefix,
        dtype=object,
        chunks=((1,) * n_row_blocks, (1,) * n_column_blocks),
        drop_axis=[2] if mask.ndim == 3 else [],
        meta=np.empty((0, 0), dtype=object),
        name=f"encode-frames-{dask.base.tokenize(mask.name, spec, spool_prefix)}",
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
    mask: np.ndarray, rows: tuple[int, ...], columns: tuple[int, ...], spec: FrameSpec,
    spool_prefix: str | None = None,
) -> list[tuple[int, Any]]:
    """As :func:`encode_tasks`, for a mask in memory cut into blocks of ``rows`` x ``columns``."""
    tasks = []
    row = 0
    for n_rows in rows:
        column = 0
        for n_columns in columns:
            tasks.append(numpy_block_task(
                mask[row : row + n_rows, column : column + n_columns], spec,
                row // spec.tile_rows, column // spec.tile_columns, spool_prefix=spool_prefix,
            ))
            column += n_columns
        row += n_rows
    return tasks


def numpy_block_task(
    block: np.ndarray, spec: FrameSpec, tile_row: int, tile_column: int,
    shape: tuple[int, ...] | None = None, spool_prefix: str | None = None,
) -> tuple[int, Any]:
    """The encode task of one block of whole tiles in memory, and its frame count.

    A :class:`~daskseg._tasks.DataTask`: the block is sent to a worker on its own when the task
    is submitted. No Dask array is involved: a worker then imports numpy, the codec and
    ``daskseg.encode`` (not this module), not ``dask.array`` (25 MB in every worker). The block
    is reshaped to ``shape`` on the worker, when given: reshaping a view here would copy it, and
    every task is made before the first runs.
    """
    encode = functools.partial(encode_numpy_block, spec, shape, spool_prefix)
    key = f"encode-frames-{uuid.uuid4().hex}-{tile_row}-{tile_column}"

    def make(data: Any) -> Any:
        return dask.delayed(encode, pure=False)(data, tile_row, tile_column, dask_key_name=key)

    task = DataTask(block, make, pack_block)
    rows, columns = shape[:2] if shape is not None else block.shape[:2]
    n_frames = (math.ceil(rows / spec.tile_rows)
                * math.ceil(columns / spec.tile_columns) * spec.n_channels)
    return n_frames, task


class Meanwhile:
    """Work on the client while the blocks encode (the header), in a thread of its own.

    Started once the first blocks are on the cluster (:meth:`start`), not before: highdicom's
    Python holds the GIL, and sending the first blocks waited on it (the first task of a
    300-slice series started 0.1 s into the write, with one core idle until then).
    """

    def __init__(self, pool: ThreadPoolExecutor, work: Callable[[], Any] | None) -> None:
        self._pool, self._work = pool, work
        self._future: Future | None = None

    def start(self) -> None:
        if self._work is not None and self._future is None:
            self._future = self._pool.submit(self._work)

    def raise_if_failed(self) -> None:
        """Raise the work's exception, if it has ended with one."""
        future = self._future
        if future is not None and future.done() and future.exception() is not None:
            future.result()

    def result(self) -> Any:
        """What the work returned (started now, if it was not): None without work."""
        self.start()
        return self._future.result() if self._future is not None else None


def encode_blocks(
    client: Client,
    tasks: list[tuple[int, Any]],
    spool: Spool,
    tile_nonempty: np.ndarray,
    bar: Any,
    meanwhile: Meanwhile | None = None,
    workers: dict[str, int] | None = None,
) -> bool:
    """Run the block tasks a bounded window at a time; spool their frames. Returns overlap.

    ``meanwhile`` is work for the client while the blocks encode (the header), started once
    the first window is submitted; its exception stops the encoding as soon as a block comes
    back after it failed. ``workers`` is :func:`~daskseg._client.cluster_workers`' answer,
    when the caller asked already.
    """
    overlap = False
    delayed = [task for _, task in tasks]
    # Results are gathered up to 8 at a time, not one per worker thread: each gather cost the
    # client about 3 ms of CPU, taken from the codecs on a machine of few cores (64 blocks of a
    # 16384² detailed mask on 2 workers: 0.07 s less of the client's CPU, the write 4% faster).
    # The results are small: a worker on this machine sends back only where its frames are.
    for index, encoded in run_windowed(
        client, delayed, "encode a block of the mask", workers,
        on_submitted=meanwhile.start if meanwhile is not None else None, few_gathers=True,
        # the header's error, as blocks finish: run_windowed cancels those still in flight
        check=meanwhile.raise_if_failed if meanwhile is not None else None,
    ):
        result: BlockResult = encoded[0, 0]
        rows, columns = result.tile_nonempty.shape
        tile_nonempty[
            result.tile_row : result.tile_row + rows,
            result.tile_column : result.tile_column + columns,
        ] = result.tile_nonempty
        overlap |= result.overlap
        spool.add_block(result)
        bar.update(tasks[index][0])
    return overlap


@contextlib.contextmanager
def encoded_frames(
    client: Client | None,
    tasks: list[tuple[int, Any]] | Callable[[int | None], list[tuple[int, Any]]],
    destination: pathlib.Path,
    shape: tuple[int, int, int],
    progress: bool,
    meanwhile: Callable[[], Any] | None = None,
    worker_prefix: str | None = None,
    mask: Any = None,
) -> Iterator[tuple[Spool, np.ndarray, bool, Any]]:
    """Encode every block on the cluster into a spool beside ``destination``.

    ``tasks`` are (frames, task) pairs, or a function that makes them from the cluster's
    number of worker threads (None when it is not known), for blocks sized to the cluster.

    ``worker_prefix`` is the ``spool_prefix`` the tasks were made with: workers on this
    machine then write their frames to files of their own (see :class:`Spool`).
    ``meanwhile`` runs in a thread on the client while the blocks encode (highdicom building
    the header: a third of a second the first time, loading its tables of the standard), from
    when the first blocks are on the cluster; its exception stops the encoding (see
    :func:`encode_blocks`).

    Yields the spool (removed on leaving), which tiles (``shape[1:]``) hold a non-zero pixel,
    whether segments overlap, and what ``meanwhile`` returned. ``shape`` is (channels, tile
    rows, tile columns). A Zarr ``mask`` on local disk (the user's, as given) is refused once
    the blocks are in if its store went away meanwhile; a full disk, here or in the caller's
    body (the file), names ``destination``'s folder.
    """
    from daskseg._file import naming_a_full_disk
    from daskseg._inputs import check_zarr_folders_kept, local_zarr_folders

    zarr_folders = local_zarr_folders(mask)
    with naming_a_full_disk(destination):
        spool = Spool(destination.parent, destination.name, shape, worker_prefix)
        try:
            spool.open()
            tile_nonempty = np.zeros(shape[1:], dtype=bool)
            with ThreadPoolExecutor(1, thread_name_prefix="daskseg-header") as pool:
                running = Meanwhile(pool, meanwhile)
                with cluster_client(client) as dask_client:
                    workers = cluster_workers_if_known(dask_client)
                    if callable(tasks):
                        tasks = tasks(sum(workers.values()) if workers else None)
                    if worker_prefix is not None and workers:
                        spool.prepare_workers(loopback_workers(workers))
                    with progress_bar(sum(n for n, _ in tasks), "encoding frames",
                                      enabled=progress, client=dask_client) as bar:
                        overlap = encode_blocks(dask_client, tasks, spool, tile_nonempty,
                                                bar, running, workers)
                made = running.result()
            check_zarr_folders_kept(zarr_folders)
            yield spool, tile_nonempty, overlap, made
        finally:
            spool.close()
