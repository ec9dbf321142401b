"""Reading SEGs of tiled images: the public facade over the frame index and the decoder.

:class:`SegmentationReader` opens a file's frame index (``_frames``) and builds the lazy array
whose tasks decode frames on the workers (``_decode``); the six read options are checked in one
place, :class:`ReadOptions`, and say what the tasks make of the stored values.
"""

from __future__ import annotations

import contextlib
import functools
import math
import numbers
import os
import pathlib
import shutil
import uuid
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, BinaryIO

import dask
import dask.array as da
import numpy as np
import pydicom
from dask.highlevelgraph import HighLevelGraph
from numpy.typing import DTypeLike

from daskseg._decode import FrameRef, Output, read_chunk, store_block
from daskseg._frames import (
    HEADER_DAMAGE,
    FileIdentity,
    FileSource,
    FrameRanges,
    FrameSource,
    check_segmentation,
    damaged_header,
    describe_segments,
    file_identity,
    header_cut_short,
    invalid_dicom_reason,
    header_int,
    index_frames,
    locate_frames,
    open_file,
    segment_items,
)
from daskseg._client import cluster_client
from daskseg._file import naming_a_full_disk, replace_tree
from daskseg._inputs import absolute_local_store, check_flags, check_store_folder, in_fsspec_memory
from daskseg._malloc import register_on_current_client
from daskseg._progress import progress_bar
from daskseg._tasks import (block_tasks, compute_into_memory, compute_settled, computed_blocks,
                            run_windowed)
from daskseg.errors import (
    DestinationExistsError,
    SegmentationFileError,
    SegmentationInputError,
    SegmentationTypeError,
)
from daskseg.plan import TileGrid, aligned_chunks

if TYPE_CHECKING:
    import zarr

    from daskseg._volread import VolumeSegmentationReader
    from daskseg._web import WebHead
    from distributed import Client
    from zarr.storage import StoreLike

__all__ = ["ReadOptions", "SegmentationReader", "open_segmentation", "read_segmentation"]


#: The most chunks a lazy array may have: each is a task holding its frames' byte ranges.
_MAX_CHUNKS = 2**20
# A default chunk's output: 2048 x 2048 pixels of one label image in float64 (a tile if more).
_DEFAULT_CHUNK_BYTES = 32 * 2**20


def _smallest_uint(value: int) -> np.dtype:
    for dtype in (np.uint8, np.uint16, np.uint32):
        if value <= np.iinfo(dtype).max:
            return np.dtype(dtype)
    return np.dtype(np.uint64)


def _can_hold(dtype: np.dtype, value: int) -> bool:
    if dtype.kind == "f":
        return value <= np.finfo(dtype).max
    if dtype.kind == "b":
        return value <= 1
    return value <= np.iinfo(dtype).max


@dataclass(frozen=True)
class ReadOptions:
    """The six options of a read, as :func:`read_segmentation` documents them."""

    segment_numbers: Sequence[int] | None = None
    combine_segments: bool = False
    relabel: bool = False
    rescale_fractional: bool = True
    dtype: DTypeLike | None = None
    chunks: int | tuple[int, int] | None = None

    def output(self, reader: SegmentationReader) -> Output:
        """Check the options against a SEG as highdicom does; say what the tasks make of it."""
        check_flags(combine_segments=self.combine_segments, relabel=self.relabel,
                    rescale_fractional=self.rescale_fractional)
        available = reader.segment_numbers
        if isinstance(self.segment_numbers, (str, bytes)) or not (
            self.segment_numbers is None or hasattr(self.segment_numbers, "__iter__")
        ):
            raise SegmentationTypeError(
                "segment_numbers is a sequence of segment numbers (or None for all), not "
                f"{type(self.segment_numbers).__name__}."
            )
        numbers = list(available if self.segment_numbers is None else self.segment_numbers)
        if not numbers:
            raise SegmentationInputError(
                f"segment_numbers is empty; give some of {available}, or None for all."
            )
        unknown = sorted(set(numbers) - set(available))
        if unknown:
            raise SegmentationInputError(
                f"Segment numbers {unknown} are not in this SEG; it holds {available}."
            )
        combine = self.combine_segments
        fractional = reader.segmentation_type == "FRACTIONAL"
        if fractional and combine and not self.rescale_fractional:
            raise SegmentationInputError(
                "The segments of a FRACTIONAL SEG can be combined only with "
                "rescale_fractional=True (as in highdicom)."
            )
        labels = list(range(1, len(numbers) + 1)) if self.relabel else numbers
        padding = None
        if reader.segmentation_type == "LABELMAP":
            padding = int(reader.header.get("PixelPaddingValue", 0))
            bits = int(reader.header.BitsAllocated)
            if not 0 <= padding < 2**bits:
                # PS3.3 C.7.5.1.1.2: the padding value is a stored pixel value.
                raise SegmentationFileError(
                    f"{reader.path}: PixelPaddingValue {padding} cannot be a label of a "
                    f"LABELMAP of BitsAllocated {bits}, whose labels are 0 to {2**bits - 1}: "
                    "the file is damaged."
                )
        # Combined without relabelling, labels not asked for keep the stored background
        # (PixelPaddingValue), as in highdicom: the output holds it too.
        background = padding if padding is not None and combine and not self.relabel else 0
        rescale = fractional and self.rescale_fractional and not combine
        if combine:
            largest = max(*labels, background)
        elif fractional and not rescale:  # stored values, up to MaximumFractionalValue
            largest = int(reader.header.MaximumFractionalValue)
        else:
            largest = 1
        requested = self.dtype
        if requested is None:
            requested = np.float32 if rescale else _smallest_uint(largest)
        try:
            dtype = np.dtype(requested)
        except TypeError as error:
            raise SegmentationTypeError(f"dtype {requested!r} is not a NumPy data type.") from error
        if dtype.kind not in "uifb":
            raise SegmentationInputError(
                f"dtype {dtype} cannot hold segmentation values; use an integer, float or bool type."
            )
        if not _can_hold(dtype, largest):
            raise SegmentationInputError(
                f"The largest output value is {largest}, which dtype {dtype} cannot hold; "
                "use a larger type or leave dtype=None."
            )
        if rescale and dtype.kind != "f":
            raise SegmentationInputError(
                f"Rescaled fractional values need a floating-point dtype, not {dtype}; "
                "use float32 or pass rescale_fractional=False."
            )
        highest = stored = None
        if padding is not None:
            stored = sorted({0, padding, *reader.segment_numbers})
            highest = stored[-1]
        return Output(
            segmentation_type=reader.segmentation_type,
            combine_segments=combine,
            numbers=tuple(numbers),
            labels=tuple(labels),
            background=background,
            max_fractional=int(reader.header.MaximumFractionalValue) if fractional else None,
            rescale=rescale,
            dtype=dtype.str,
            highest_stored=highest,
            # Numbers that skip (2, 5, 9): a frame's labels are checked one by one too.
            stored_labels=() if stored is None or stored == list(range(len(stored)))
            else tuple(stored),
        )

    def chunk_pixels(self, pixel_bytes: int = 1,
                     tile: tuple[int, int] = (1, 1)) -> tuple[int, int]:
        """The requested chunk size in pixels (rows, columns), before rounding to tiles.

        By default 2048 x 2048, or fewer (whole tiles of ``tile``) where a pixel of the output takes
        ``pixel_bytes`` (its segments apart, of its dtype): at most _DEFAULT_CHUNK_BYTES of
        output (or one tile), whatever the number of segments (255 fractional segments made
        4 GiB chunks, which killed the workers of an 8 MB SEG).
        """
        if self.chunks is None:
            side = min(2048, math.isqrt(max(1, _DEFAULT_CHUNK_BYTES // max(1, pixel_bytes))))
            return (max(tile[0], side // tile[0] * tile[0]),
                    max(tile[1], side // tile[1] * tile[1]))
        sizes: Any = self.chunks
        if isinstance(sizes, numbers.Integral):
            sizes = (sizes, sizes)
        if not (isinstance(sizes, (tuple, list)) and len(sizes) == 2 and all(
            isinstance(v, numbers.Integral) and not isinstance(v, bool) and int(v) >= 1
            for v in sizes
        )):
            raise SegmentationInputError(
                f"chunks is a number of pixels (rows and columns) or two numbers (rows, "
                f"columns), each 1 or more, not {self.chunks!r}."
            )
        return int(sizes[0]), int(sizes[1])


def _read_header(handle: BinaryIO) -> tuple[pydicom.Dataset, list[Any] | None]:
    """A SEG's header up to its Pixel Data, and its per-frame items walked raw.

    pydicom makes a Dataset of every per-frame item: a TILED_SPARSE SEG of 20,480 frames took
    5.7 s to open that way, and 307,200 frames 2 GB and minutes. The items' bytes are walked
    for the tile position and segment of each frame instead, as the volume reader does. A
    big-endian or deflated file (no SEG writer makes one) is read by pydicom whole.
    """
    from daskseg._volframes import at_frame_items, read_frame_items, scan_frame_items

    start = handle.tell()
    header = pydicom.filereader.read_partial(handle, stop_when=at_frame_items)
    syntax = header.file_meta.get("TransferSyntaxUID")
    if (syntax is None or not syntax.is_transfer_syntax or not syntax.is_little_endian
            or syntax.is_deflated):
        handle.seek(start)
        return pydicom.dcmread(handle, stop_before_pixels=True), None
    raw = read_frame_items(handle, header, syntax.is_implicit_VR)
    return header, scan_frame_items(raw, 0, syntax.is_implicit_VR) if raw else None


class SegmentationReader:
    """A DICOM Segmentation of a tiled image, opened for lazy, parallel reading.

    Parameters
    ----------
    path : str or os.PathLike
        A local path, an fsspec URL (needs fsspec), or a DICOMweb instance URL (WADO-RS,
        ``{root}/studies/{study}/series/{series}/instances/{sop}``; needs dicomweb-client).
    session, headers, timeout
        DICOMweb only; see :func:`open_segmentation`.

    Attributes
    ----------
    segmentation_type : str
        "BINARY", "FRACTIONAL" or "LABELMAP".
    segment_numbers : list of int
    segment_descriptions : list of highdicom.seg.SegmentDescription
    tile_size : tuple of int
        Rows and columns of a frame.
    grid_shape : tuple of int
        Tiles along rows and columns.
    shape : tuple of int
        Rows and columns of the total pixel matrix.
    number_of_frames : int
    transfer_syntax_uid : pydicom.uid.UID
    """

    def __init__(
        self,
        path: str | os.PathLike,
        *,
        session: Any = None,
        headers: Mapping[str, str] | None = None,
        timeout: float | tuple[float, float] | None = None,
    ) -> None:
        from daskseg.dicomweb import is_dicomweb_url

        self.path = os.fspath(path)
        self._source: FrameSource
        self._frame_ranges: list[FrameRanges] | None
        if is_dicomweb_url(self.path):
            from daskseg._web import open_web

            self._init_web(open_web(self.path, session=session, headers=headers,
                                    timeout=timeout))
            return
        _check_no_web_options(self.path, session, headers, timeout)
        name = self.path
        header, identity = self._open_file(name)
        self._source = FileSource.of(self.path, identity)
        self._init(header, name)

    def _init_web(self, head: WebHead) -> None:
        if head.frame_items is not None:
            raise SegmentationFileError(
                f"{head.source.path} is a SEG of a series or multi-frame image, not of a tiled "
                "image: open it with open_segmentation."
            )
        self._layout = head.layout
        self._source = head.source
        self.path = str(head.source.target)  # without credentials: safe to show
        self._frame_ranges = None
        self._init(head.header, self.path)

    @classmethod
    def _from_web(cls, head: WebHead) -> SegmentationReader:
        reader = cls.__new__(cls)
        reader._init_web(head)
        return reader

    def _init(self, header: pydicom.Dataset, name: str) -> None:
        try:
            self._describe(header, name)
        except SegmentationFileError:
            raise
        except HEADER_DAMAGE as error:
            raise damaged_header(name, error) from error

    def _open_file(self, name: str) -> tuple[pydicom.Dataset, FileIdentity | None]:
        """The file's header (its frames located), and its identity for the tasks' reads."""
        try:
            handle = open_file(self.path)
        except FileNotFoundError as error:
            raise SegmentationFileError(f"{name} does not exist.") from error
        with handle:
            try:
                try:
                    header, self._scanned_frames = _read_header(handle)
                except SegmentationFileError as error:  # the per-frame items ran past the end
                    if (cut := header_cut_short(handle, None, name)) is not None:
                        raise cut from error
                    raise SegmentationFileError(f"{name}: {error}") from error
                pixel_element = handle.tell()  # the header ends at the Pixel Data element
                if (cut := header_cut_short(handle, header, name)) is not None:
                    raise cut
                self._layout, self._frame_ranges = locate_frames(handle, header, pixel_element,
                                                                 name=name)
            except pydicom.errors.InvalidDicomError as error:
                raise SegmentationFileError(f"{name} is not a DICOM file: "
                                            f"{invalid_dicom_reason(error)}") from error
            except SegmentationFileError:
                raise
            except HEADER_DAMAGE as error:
                if (cut := header_cut_short(handle, None, name)) is not None:
                    raise cut from error
                # pydicom's verdict on a header it cannot parse (cut, garbage lengths or tags).
                raise damaged_header(name, error) from error
            identity = file_identity(handle)
        return header, identity

    def _describe(self, header: pydicom.Dataset, name: str) -> None:
        self.header = header
        items = segment_items(header)
        self.segment_numbers = [int(item.SegmentNumber) for item in items]
        self.segmentation_type = check_segmentation(header, self.segment_numbers,
                                                    self._layout.bits_allocated, name)
        self.tile_size = (self._layout.rows, self._layout.columns)
        self.shape = (header_int(header, "TotalPixelMatrixRows", name),
                      header_int(header, "TotalPixelMatrixColumns", name))
        self.number_of_frames = int(header.get("NumberOfFrames", 1))
        self.transfer_syntax_uid = header.file_meta.TransferSyntaxUID
        self._grid = TileGrid(*self.shape, *self.tile_size)
        self.grid_shape = (self._grid.n_tile_rows, self._grid.n_tile_columns)
        self._frame_table = index_frames(header, self.segment_numbers, self._grid, name=name,
                                         frames=getattr(self, "_scanned_frames", None))
        self._scanned_frames = None  # held only to index them

    @functools.cached_property
    def segment_descriptions(self) -> list[Any]:
        """The segments' descriptions, by number; made (and checked by highdicom) when first
        asked for, since that takes milliseconds a segment (SegmentationFileError if one is
        not valid)."""
        return describe_segments(self.header, self.path)

    def to_dask(
        self,
        *,
        segment_numbers: Sequence[int] | None = None,
        combine_segments: bool = False,
        relabel: bool = False,
        rescale_fractional: bool = True,
        dtype: DTypeLike | None = None,
        chunks: int | tuple[int, int] | None = None,
    ) -> da.Array:
        """The total pixel matrix as a lazy Dask array; see :func:`read_segmentation`."""
        register_on_current_client()
        options = ReadOptions(segment_numbers, combine_segments, relabel, rescale_fractional,
                              dtype, chunks)
        output = options.output(self)
        numbers = output.numbers
        labelmap = self.segmentation_type == "LABELMAP"

        tile_rows, tile_columns = self.tile_size
        chunk_rows, chunk_columns = options.chunk_pixels(
            np.dtype(output.dtype).itemsize * (1 if combine_segments else len(numbers)),
            (tile_rows, tile_columns))
        row_chunks = aligned_chunks(self.shape[0], tile_rows, chunk_rows, max_tiles=64)
        column_chunks = aligned_chunks(self.shape[1], tile_columns, chunk_columns, max_tiles=64)
        n_chunks = len(row_chunks) * len(column_chunks)
        if n_chunks > _MAX_CHUNKS:
            raise SegmentationInputError(
                f"chunks={chunks} makes {n_chunks} chunks of {self.path}, more than "
                f"{_MAX_CHUNKS} (a graph that large takes long to build and schedule); use "
                "larger chunks."
            )
        channels = [0] if labelmap else [self.segment_numbers.index(n) for n in numbers]
        out_chunks: tuple[tuple[int, ...], ...] = (row_chunks, column_chunks)
        if not combine_segments:
            out_chunks += ((len(numbers),),)
        token = dask.base.tokenize(
            self.path, os.path.getmtime(self.path) if os.path.exists(self.path) else 0,
            output, out_chunks,
        )
        name = f"decode-seg-{token}"
        source = self._source
        graph: dict[tuple[Any, ...], Any] = {}
        row_start = 0
        for i, n_rows in enumerate(row_chunks):
            column_start = 0
            for j, n_columns in enumerate(column_chunks):
                tile_row, tile_column = row_start // tile_rows, column_start // tile_columns
                tiles = (-(-n_rows // tile_rows), -(-n_columns // tile_columns))
                frames: list[list[FrameRef | None]] = []
                for channel in channels:
                    block = self._frame_table[
                        channel, tile_row : tile_row + tiles[0], tile_column : tile_column + tiles[1]
                    ].ravel()
                    frames.append([
                        None if index < 0 else (int(index), self._ranges(int(index)))
                        for index in block
                    ])
                task = (read_chunk, source, self._layout, frames, tiles, (n_rows, n_columns),
                        output)
                key = (name, i, j) if combine_segments else (name, i, j, 0)
                graph[key] = task
                column_start += n_columns
            row_start += n_rows
        meta = np.empty((0,) * len(out_chunks), dtype=np.dtype(output.dtype))
        return da.Array(HighLevelGraph.from_collections(name, graph, dependencies=[]), name,
                        out_chunks, meta=meta)

    def to_numpy(
        self,
        *,
        segment_numbers: Sequence[int] | None = None,
        combine_segments: bool = False,
        relabel: bool = False,
        rescale_fractional: bool = True,
        dtype: DTypeLike | None = None,
        chunks: int | tuple[int, int] | None = None,
        progress: bool = False,
        client: Client | None = None,
    ) -> np.ndarray:
        """Decode the SEG into memory: highdicom's ``get_total_pixel_matrix``, in parallel.

        The blocks of :meth:`to_dask` are decoded on the cluster and each is copied into its
        place in the result as it comes back, straight from workers on this machine. Faster
        than ``to_dask(...).compute()``, which first gathers every block on one worker.

        Parameters
        ----------
        segment_numbers, combine_segments, relabel, rescale_fractional, dtype, chunks
            As :meth:`to_dask`.
        progress : bool
            Show a progress bar of blocks decoded (and the dashboard link).
        client : distributed.Client, optional
            Run on this cluster; by default the current client, or Dask's threads if none.

        Returns
        -------
        numpy.ndarray
            ``(rows, columns)`` combined, or ``(rows, columns, segments)``.
        """
        array = self.to_dask(
            segment_numbers=segment_numbers, combine_segments=combine_segments, relabel=relabel,
            rescale_fractional=rescale_fractional, dtype=dtype, chunks=chunks,
        )
        return _into_memory(array, client, progress, "decode a block of the SEG")

    def _ranges(self, index: int) -> FrameRanges:
        if not isinstance(self._source, FileSource):
            return []  # the source asks for frames by number
        if self._frame_ranges is None:
            return self._layout.ranges(index)
        return self._frame_ranges[index]

    def to_zarr(
        self,
        store: StoreLike,
        *,
        segment_numbers: Sequence[int] | None = None,
        combine_segments: bool = False,
        relabel: bool = False,
        rescale_fractional: bool = True,
        dtype: DTypeLike | None = None,
        chunks: int | tuple[int, int] | None = None,
        overwrite: bool = False,
        progress: bool = False,
        client: Client | None = None,
    ) -> zarr.Array:
        """Decode the SEG into a Zarr array, block by block with bounded memory.

        Parameters
        ----------
        store : str, os.PathLike or zarr store
            Where to create the array.
        segment_numbers, combine_segments, relabel, rescale_fractional, dtype, chunks
            As :meth:`to_dask`; the Zarr array's chunks are the Dask array's.
        overwrite : bool
            Replace an existing array at ``store``.
        progress : bool
            Show a progress bar of blocks decoded (and the dashboard link).
        client : distributed.Client, optional
            Run on this cluster; by default the current client, or Dask's threads if none.

        Returns
        -------
        zarr.Array
        """
        array = self.to_dask(
            segment_numbers=segment_numbers, combine_segments=combine_segments, relabel=relabel,
            rescale_fractional=rescale_fractional, dtype=dtype, chunks=chunks,
        )
        return decoded_into_zarr(array, store, overwrite=overwrite, progress=progress,
                                 client=client)


def decoded_into_zarr(array: da.Array, store: StoreLike, *, overwrite: bool, progress: bool,
                      client: Client | None) -> zarr.Array:
    """A reader's lazy ``array`` decoded into a new Zarr array at ``store`` (its chunks the
    array's), block by block; a local store is complete or absent."""
    import zarr

    # A local store is built beside its place and renamed there when complete: a failure
    # (a damaged frame, segments that cannot be combined) leaves nothing behind.
    destination = None
    if isinstance(store, (str, os.PathLike)) and "://" not in os.fsdecode(store):
        # Absolute, as the workers write the chunks: those started in another folder
        # wrote there, leaving this store empty.
        destination = pathlib.Path(os.path.abspath(os.fsdecode(store)))
    else:
        store = absolute_local_store(store)
    if destination is not None and destination.exists() and not overwrite:
        raise DestinationExistsError(
            f"{store} exists; pass overwrite=True to replace it, or choose another store."
        )
    if destination is not None:
        check_store_folder(destination)
    partial = (destination.with_name(f".{destination.name}.{uuid.uuid4().hex[:8]}.partial")
               if destination is not None else None)
    # The partial store is made inside the try that removes it: a signal's exception
    # (Ctrl-C, or SIGTERM in the CLI) can come while zarr makes it.
    try:
        try:
            target = zarr.create_array(
                str(partial) if partial is not None else store, shape=array.shape,
                chunks=tuple(c[0] for c in array.chunks), dtype=array.dtype,
                overwrite=overwrite,
            )
        except (zarr.errors.ContainsArrayError, zarr.errors.ContainsGroupError) as error:
            raise DestinationExistsError(
                f"{store} holds a Zarr array or group already; pass overwrite=True to "
                "replace it, or choose another store."
            ) from error
        with (naming_a_full_disk(destination, "the Zarr store", spooled=False)
              if destination is not None else contextlib.nullcontext()):
            _store_into(array, target, client, progress)
        if destination is not None and partial is not None:
            replace_tree(partial, destination)
            target = zarr.open_array(str(destination), mode="r+")
    except BaseException:
        if partial is not None:
            shutil.rmtree(partial, ignore_errors=True)
        raise
    return target


def _store_into(array: da.Array, target: Any, client: Client | None, progress: bool) -> None:
    """Decode ``array``'s blocks into the Zarr array ``target``."""
    with _decoding(array, client, progress) as (client, bar):
        if _held_by_this_process(target.store):
            # Workers would write into copies of an in-memory store, pickled with their
            # tasks, leaving this one empty. A zip file takes one writer, and a ZipStore
            # unpickled (on a worker, or by dask's tokenize, which unpickles what it
            # hashes) opens it again for writing, empty. Decoded there, written here.
            for region, block in computed_blocks(client, array,
                                                 "decode a block of the SEG"):
                target[region] = block
                bar.update(1)
        elif client is None:
            from dask.callbacks import Callback

            class _Count(Callback):
                def _posttask(self, key, result, dsk, state, worker_id):
                    if isinstance(key, tuple) and str(key[0]).startswith("store-map"):
                        bar.update(1)

            stores = da.store(array, target, lock=False, compute=False,
                              return_stored=False)
            with _Count():
                compute_settled(stores)  # the configured local scheduler
        else:
            # One task per block, each reading its frames and writing its region: memory
            # on each worker is one block at a time, whatever the SEG's size.
            stored = array.map_blocks(store_block, target=target, dtype=np.int64,
                                      chunks=tuple((1,) * n for n in array.numblocks))
            for _ in run_windowed(client, block_tasks(stored).ravel().tolist(),
                                  "decode a block of the SEG into Zarr", settle=True):
                bar.update(1)


def _held_by_this_process(store: Any) -> bool:
    """Whether a Zarr store lives in this process, where workers cannot write into it: in
    memory (zarr's MemoryStore, or fsspec's ``memory://``, of which each worker process has
    its own), or a zip file (which each worker would append to on its own, over the others)."""
    import zarr.storage

    while isinstance(store, zarr.storage.WrapperStore):
        store = store._store
    return in_fsspec_memory(store) or isinstance(
        store, (zarr.storage.MemoryStore, zarr.storage.ZipStore))


@contextlib.contextmanager
def _decoding(array: da.Array, client: Client | None, progress: bool) -> Iterator[Any]:
    """The client the readers decode ``array``'s blocks with (the one given, the current one,
    or None for Dask's threads), and a progress bar of its blocks."""
    with (
        cluster_client(client, start=False) as client,
        progress_bar(int(np.prod(array.numblocks)), "decoding blocks", enabled=progress,
                     client=client, unit="block") as bar,
    ):
        yield client, bar


def _into_memory(array: da.Array, client: Client | None, progress: bool, what: str
                 ) -> np.ndarray:
    """The readers' ``to_numpy``: ``array`` decoded on the cluster into one numpy array."""
    with _decoding(array, client, progress) as (client, bar):
        return compute_into_memory(client, array, what, lambda: bar.update(1))


def open_segmentation(
    path: str | os.PathLike,
    *,
    session: Any = None,
    headers: Mapping[str, str] | None = None,
    timeout: float | tuple[float, float] | None = None,
) -> SegmentationReader | VolumeSegmentationReader:
    """Open a SEG for lazy, parallel reading (header only): of a tiled image, or of a series.

    Parameters
    ----------
    path : str or os.PathLike
        A local path, an fsspec URL, or a DICOMweb instance URL
        (``{root}/studies/{study}/series/{series}/instances/{sop}``). For a URL the metadata is
        fetched once here; each task then fetches only its own frames with WADO-RS frame
        retrieval (several per request) and decodes them on its worker.
    session : requests.Session, optional
        DICOMweb: the session to send requests with (authentication, proxies). It is pickled
        into the tasks, so its credentials reach the scheduler and the workers; prefer
        ``headers``.
    headers : mapping, optional
        DICOMweb: extra headers, e.g. ``{"Authorization": "Bearer ..."}``. They travel with the
        tasks as plain values (each worker builds its own session) and are never printed;
        ``user:password@`` in the URL becomes such a header too.
    timeout : float or (float, float), optional
        DICOMweb: connect and read timeouts of each request in seconds; (5, 60) by default.

    Raises
    ------
    SegmentationInputError
        Not a SEG of a tiled image; a DICOMweb URL that is not an instance's, or answered 404.
    DICOMwebError
        The server cannot be reached, does not answer in time, refuses access or fails (an
        ``OSError``); also when the tasks fetch frames.

    Returns
    -------
    SegmentationReader or VolumeSegmentationReader
        Its segments, type and tile grid, and ``to_dask`` / ``to_zarr``; for a SEG of a
        series or multi-frame image (CT, MR...), its planes and ``to_dask``.

    Examples
    --------
    >>> seg = open_segmentation("seg.dcm")  # doctest: +SKIP
    >>> seg.segment_numbers, seg.grid_shape  # doctest: +SKIP
    ([1, 2, 3], (32, 32))
    """
    if not isinstance(path, (str, os.PathLike)):
        raise SegmentationTypeError(f"path must be a str or os.PathLike, not {type(path).__name__}.")
    from daskseg._volread import VolumeSegmentationReader, read_volume_head
    from daskseg.dicomweb import is_dicomweb_url

    if is_dicomweb_url(os.fspath(path)):
        from daskseg._web import open_web

        web = open_web(os.fspath(path), session=session, headers=headers, timeout=timeout)
        if web.frame_items is not None:
            return VolumeSegmentationReader.from_web(web)
        return SegmentationReader._from_web(web)
    _check_no_web_options(os.fspath(path), session, headers, timeout)
    head = read_volume_head(os.fspath(path))
    if head is not None:
        return VolumeSegmentationReader(os.fspath(path), head)
    return SegmentationReader(path)


def _check_no_web_options(path: str, session: Any, headers: Any, timeout: Any) -> None:
    if session is not None or headers is not None or timeout is not None:
        raise SegmentationInputError(
            f"session, headers and timeout apply to DICOMweb URLs only, and {path} is not one."
        )


def read_segmentation(
    path: str | os.PathLike,
    *,
    segment_numbers: Sequence[int] | None = None,
    combine_segments: bool = False,
    relabel: bool = False,
    rescale_fractional: bool = True,
    dtype: DTypeLike | None = None,
    chunks: int | tuple[int, int] | None = None,
    source_sop_instance_uids: Sequence[str] | None = None,
    source_frame_numbers: Sequence[int] | None = None,
    session: Any = None,
    headers: Mapping[str, str] | None = None,
    timeout: float | tuple[float, float] | None = None,
) -> da.Array:
    """Read a SEG as a lazy Dask array: a tiled image's total pixel matrix, or a volume.

    The values equal highdicom's ``Segmentation.get_total_pixel_matrix`` with the same
    arguments; frames are decoded in parallel by the tasks, and only those a slice touches.
    A SEG of a series or multi-frame image (CT, MR...) reads as ``(planes, rows, columns)``
    (combined) or ``(planes, rows, columns, segments)``, equal to highdicom's
    ``get_pixels_by_source_instance``: by default its planes with frames sorted along the
    slice normal, or the source images ``source_sop_instance_uids`` in that order (those
    without frames read as zeros). A SEG of one multi-frame image (Enhanced CT, MR...) reads
    the frames of it ``source_frame_numbers`` in that order instead, equal to highdicom's
    ``get_pixels_by_source_frame`` with ``assert_missing_frames_are_empty=True``.

    Parameters
    ----------
    path : str or os.PathLike
        A local path, an fsspec URL or a DICOMweb instance URL (see :func:`open_segmentation`).
    segment_numbers : sequence of int, optional
        Segments to read, in this order; all by default.
    combine_segments : bool
        Combine the segments into one label image (rows, columns); otherwise stack them on
        the last axis (rows, columns, segments). Overlapping segments cannot be combined.
    relabel : bool
        With ``combine_segments``, label segment ``segment_numbers[i]`` as ``i + 1``.
    rescale_fractional : bool
        FRACTIONAL SEGs: values as fractions in [0, 1] (float32); else the stored integers.
    dtype : numpy dtype, optional
        Output type; chosen as highdicom does by default.
    chunks : int or (int, int), optional
        Chunk size in pixels, rounded to whole tiles; about 2048 by default. For a volume:
        planes per chunk.
    source_sop_instance_uids : sequence of str, optional
        SEGs of series of single-frame images only: the source images whose planes to read,
        in this order.
    source_frame_numbers : sequence of int, optional
        SEGs of one multi-frame image only: the frames of it (1-based) whose planes to read,
        in this order; frames without SEG frames read as zeros.
    session, headers, timeout
        DICOMweb URLs only; see :func:`open_segmentation` (prefer ``headers`` for credentials).

    Returns
    -------
    dask.array.Array
        ``(rows, columns, len(segment_numbers))`` stacked, or ``(rows, columns)`` combined.
        A LABELMAP SEG is its stored labels when combined (only the requested ones; others
        read as background) and one-hot planes of the requested labels when not.

    Raises
    ------
    SegmentationFileError
        The file is not a SEG of a tiled image, or is damaged (its header when opened, a frame
        it needs when computed); the message names the file and, when computed, the frame.
    SegmentationInputError
        The options do not fit the SEG (unknown segment numbers, a dtype too small, FRACTIONAL
        combined without rescaling, ``source_frame_numbers`` for a SEG of single-frame images
        or ``source_sop_instance_uids`` for one of a multi-frame image, a frame number below 1).
    SegmentationInputError
        When computed: segments overlap and cannot be combined, or FRACTIONAL values are not
        all 0 or MaximumFractionalValue and cannot be combined; also a RuntimeError or a
        ValueError, as highdicom raises in these cases.

    Notes
    -----
    One deliberate difference from highdicom 0.28: for a LABELMAP SEG combined without
    ``relabel``, highdicom also keeps a label that was not requested when exactly one of the
    SEG's segments is left out; daskseg reads every label that was not requested as background.

    Examples
    --------
    >>> labels = read_segmentation("seg.dcm", combine_segments=True)  # doctest: +SKIP
    >>> labels[:1024, :1024].compute()  # decodes only the chunks of that region  # doctest: +SKIP
    """
    reader = open_segmentation(path, session=session, headers=headers, timeout=timeout)
    options = dict(segment_numbers=segment_numbers, combine_segments=combine_segments,
                   relabel=relabel, rescale_fractional=rescale_fractional, dtype=dtype)
    if isinstance(reader, SegmentationReader):
        for name, value in (("source_sop_instance_uids", source_sop_instance_uids),
                            ("source_frame_numbers", source_frame_numbers)):
            if value is not None:
                raise SegmentationInputError(
                    f"{name} is for SEGs of series or multi-frame images; this SEG is of a "
                    "tiled image."
                )
        return reader.to_dask(chunks=chunks, **options)  # type: ignore[arg-type]
    return reader.to_dask(source_sop_instance_uids=source_sop_instance_uids,
                          source_frame_numbers=source_frame_numbers,
                          chunks=chunks,  # type: ignore[arg-type]  # checked there
                          **options)  # type: ignore[arg-type]
