"""Frame index, parallel decode, lazy arrays, to_zarr: reading SEGs of tiled images.

The header is read once, without the pixel data. Each frame's bytes are located from the Basic
or Extended Offset Table, or by walking the fragment items' headers when there is neither, and
the tasks of the lazy array read them with positioned reads: a task's arguments are the byte
ranges of its own frames, so slicing the array decodes only the frames it touches.
"""

from __future__ import annotations

import functools
import os
import struct
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import dask
import dask.array as da
import numpy as np
import pydicom
from dask.highlevelgraph import HighLevelGraph
from pydicom.dataset import Dataset
from pydicom.encaps import parse_basic_offsets, parse_fragments
from pydicom.uid import JPEG2000Lossless, JPEGLSLossless, RLELossless

from daskseg._progress import progress_bar
from daskseg._tasks import block_tasks, run_windowed
from daskseg.errors import SegmentationInputError, SegmentationTypeError
from daskseg.plan import TileGrid, aligned_chunks

__all__ = ["SegmentationReader", "open_segmentation", "read_segmentation"]


def _open(path: str):
    """A binary file object for a local path or an fsspec URL."""
    if "://" in path and not path.startswith("file://"):
        import fsspec  # optional: only for URLs

        return fsspec.open(path, "rb").open()
    return open(path.removeprefix("file://"), "rb")


def _read_ranges(handle, ranges: Sequence[tuple[int, int]]) -> bytes:
    parts = []
    for offset, length in ranges:
        handle.seek(offset)
        parts.append(handle.read(length))
    return b"".join(parts)


@dataclass(frozen=True)
class _Codec:
    """How to turn a frame's bytes into an array (sent to every decode task)."""

    kind: str  # "native", "jpeg2k", "jpegls" or "rle"
    rows: int
    columns: int
    bits_allocated: int
    pixel_offset: int  # native: file offset of the first pixel byte

    @property
    def dtype(self) -> np.dtype:
        return np.dtype(np.uint16 if self.bits_allocated == 16 else np.uint8)

    def ranges(self, index: int) -> list[tuple[int, int]]:
        """Native frames: the byte range holding frame ``index`` (0-based)."""
        pixels = self.rows * self.columns
        if self.bits_allocated == 1:
            first, last = index * pixels, (index + 1) * pixels
            return [(self.pixel_offset + first // 8, -(-last // 8) - first // 8)]
        size = pixels * self.bits_allocated // 8
        return [(self.pixel_offset + index * size, size)]

    def decode(self, data: bytes, index: int) -> np.ndarray:
        shape = (self.rows, self.columns)
        if self.kind == "native":
            if self.bits_allocated == 1:
                # PS3.5 8.1.1: frames are packed back to back; this one starts mid-byte when
                # earlier frames did not fill whole bytes.
                start = index * self.rows * self.columns % 8
                bits = np.unpackbits(np.frombuffer(data, np.uint8), bitorder="little")
                return bits[start : start + self.rows * self.columns].reshape(shape)
            return np.frombuffer(data, self.dtype.newbyteorder("<")).reshape(shape)
        if self.kind == "jpeg2k":
            import imagecodecs

            array = imagecodecs.jpeg2k_decode(data, numthreads=1)
        elif self.kind == "jpegls":
            import imagecodecs

            array = imagecodecs.jpegls_decode(data)
        else:
            import rle

            array = np.frombuffer(
                rle.decode_pixel_data(
                    data, version=2, rows=self.rows, columns=self.columns,
                    bits_allocated=self.bits_allocated, samples_per_pixel=1,
                ),
                self.dtype.newbyteorder("<"),
            )
        return np.asarray(array, dtype=self.dtype).reshape(shape)


# Codestreams shorter than this are decoded once per process and the result reused.
_SMALL_CODESTREAM = 4096


@functools.lru_cache(maxsize=256)
def _decode_small(codec: _Codec, data: bytes) -> tuple[np.ndarray, bool]:
    """Decode a short codestream once per process; also say whether any pixel is non-zero.

    Empty frames, and frames wholly inside one segment, compress to the same few bytes all over
    a slide; decoding them again and again would take most of the time.
    """
    array = codec.decode(data, 0)  # encapsulated frames decode alike wherever they are
    array.flags.writeable = False
    return array, bool(array.any())


def _frame(
    codec: _Codec, handle: Any, frame: tuple[int, list[tuple[int, int]]]
) -> tuple[np.ndarray, bool]:
    """A frame's stored values, and whether any is non-zero."""
    index, ranges = frame
    data = _read_ranges(handle, ranges)
    if codec.kind != "native" and len(data) < _SMALL_CODESTREAM:
        return _decode_small(codec, data)
    array = codec.decode(data, index)
    return array, bool(array.any())


@dataclass(frozen=True)
class _Output:
    """What highdicom's ``get_total_pixel_matrix`` makes of the stored values (small, picklable)."""

    segmentation_type: str
    combine_segments: bool
    numbers: tuple[int, ...]  # the requested segment numbers, in output order
    labels: tuple[int, ...]  # combined: the output value of each requested segment
    background: int  # LABELMAP combined: the value of stored labels that were not requested
    max_fractional: int | None  # FRACTIONAL: MaximumFractionalValue
    rescale: bool  # FRACTIONAL, not combined: divide by max_fractional
    dtype: str

    def lookup(self, bits_allocated: int) -> np.ndarray:
        """LABELMAP combined: output value of each stored label."""
        table = np.full(2**bits_allocated, self.background, dtype=self.dtype)
        table[list(self.numbers)] = self.labels
        return table


def _read_chunk(
    path: str,
    codec: _Codec,
    frames: list[list[tuple[int, list[tuple[int, int]]] | None]],
    tiles: tuple[int, int],
    shape: tuple[int, int],
    output: _Output,
) -> np.ndarray:
    """Decode the frames of one chunk into highdicom's ``get_total_pixel_matrix`` values.

    ``frames[k][t]`` is ``(frame index, byte ranges)`` of channel ``k`` (a requested segment, or
    the label map) at the chunk's tile ``t`` in row-major order, or None for an omitted frame.
    """
    n_rows, n_columns = tiles
    th, tw = codec.rows, codec.columns
    labelmap = output.segmentation_type == "LABELMAP"
    combine = output.combine_segments
    shape_out = (n_rows * th, n_columns * tw) + (() if combine else (len(output.numbers),))
    out = np.zeros(shape_out, dtype=output.dtype)
    lookup = None
    if labelmap and combine:
        lookup = output.lookup(codec.bits_allocated)
        # Omitted and all-zero frames hold stored label 0 everywhere.
        out.fill(lookup[0])
    with _open(path) as handle:
        for t in range(n_rows * n_columns):
            r, c = divmod(t, n_columns)
            tile = out[r * th : (r + 1) * th, c * tw : (c + 1) * tw]
            for k, channel in enumerate(frames):
                frame = channel[t]
                if frame is None:
                    continue  # an omitted frame reads as zeros
                values, nonzero = _frame(codec, handle, frame)
                if not nonzero:
                    continue  # the output holds what zeros become there already
                if labelmap:
                    if lookup is not None:
                        tile[...] = lookup[values]
                    else:
                        for j, number in enumerate(output.numbers):
                            tile[..., j] = values == number
                elif not combine:
                    if output.rescale:
                        if values.max() > output.max_fractional:
                            raise RuntimeError(  # as highdicom
                                "Segmentation image contains values greater than the "
                                "MaximumFractionalValue recorded in the dataset."
                            )
                        # As highdicom: cast to the output type first, then divide.
                        tile[..., k] = values.astype(output.dtype) / output.max_fractional
                    else:
                        tile[..., k] = values
                else:
                    if output.max_fractional is not None and np.any(
                        (values != 0) & (values != output.max_fractional)
                    ):
                        raise ValueError(  # as highdicom
                            "Cannot combine the segments of a FRACTIONAL SEG whose values are "
                            "not all 0 or MaximumFractionalValue; use combine_segments=False."
                        )
                    present = values != 0
                    if k and np.logical_and(present, tile).any():
                        raise RuntimeError(  # as highdicom
                            "Segments overlap, so they cannot be combined into one label image; "
                            "read with combine_segments=False."
                        )
                    np.copyto(tile, output.labels[k], where=present)
    return out[: shape[0], : shape[1]]


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


class SegmentationReader:
    """A DICOM Segmentation of a tiled image, opened for lazy, parallel reading.

    Parameters
    ----------
    path : str or os.PathLike
        A local path, or an fsspec URL (needs fsspec).

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

    def __init__(self, path: str | os.PathLike) -> None:
        import highdicom as hd

        self.path = os.fspath(path)
        try:
            with _open(self.path) as handle:
                header = pydicom.dcmread(handle, stop_before_pixels=True)
                pixel_element = handle.tell()  # dcmread stops at the Pixel Data element
                self._codec, self._frame_ranges = self._locate_frames(handle, header, pixel_element)
        except FileNotFoundError as error:
            raise SegmentationInputError(f"{self.path} does not exist.") from error
        except pydicom.errors.InvalidDicomError as error:
            raise SegmentationInputError(f"{self.path} is not a DICOM file: {error}") from error
        self.header = header
        self.segmentation_type = str(header.SegmentationType)
        # A label map describes its background (the PixelPaddingValue) as a segment too;
        # like highdicom, it is not one of the segments read.
        padding = header.get("PixelPaddingValue")
        items = [item for item in header.SegmentSequence if item.SegmentNumber != padding]
        self.segment_descriptions = [hd.seg.SegmentDescription.from_dataset(i) for i in items]
        self.segment_numbers = [int(item.SegmentNumber) for item in items]
        self.tile_size = (int(header.Rows), int(header.Columns))
        self.shape = (int(header.TotalPixelMatrixRows), int(header.TotalPixelMatrixColumns))
        self.number_of_frames = int(header.get("NumberOfFrames", 1))
        self.transfer_syntax_uid = header.file_meta.TransferSyntaxUID
        self._grid = TileGrid(*self.shape, *self.tile_size)
        self.grid_shape = (self._grid.n_tile_rows, self._grid.n_tile_columns)
        self._frame_table = self._index_frames(header)

    # --------------------------------------------------------------- header

    @staticmethod
    def _locate_frames(handle, header: Dataset, start: int) -> tuple[_Codec, list | None]:
        if "SegmentSequence" not in header:
            raise SegmentationInputError(
                f"{handle.name if hasattr(handle, 'name') else 'The file'} is not a DICOM "
                "Segmentation (no SegmentSequence)."
            )
        if "TotalPixelMatrixRows" not in header:
            raise SegmentationInputError(
                "The SEG is not of a tiled image (no TotalPixelMatrixRows); read it with "
                "highdicom.seg.segread instead."
            )
        syntax = header.file_meta.TransferSyntaxUID
        kinds = {JPEG2000Lossless: "jpeg2k", JPEGLSLossless: "jpegls", RLELossless: "rle"}
        if syntax.is_encapsulated and syntax not in kinds:
            raise SegmentationInputError(f"Transfer syntax {syntax.name} is not supported.")
        implicit = syntax.is_implicit_VR
        handle.seek(start)
        group, element = struct.unpack("<HH", handle.read(4))
        if (group, element) != (0x7FE0, 0x0010):
            raise SegmentationInputError("The SEG has no Pixel Data.")
        if implicit:
            (length,) = struct.unpack("<I", handle.read(4))
        else:
            handle.read(4)  # VR and reserved bytes
            (length,) = struct.unpack("<I", handle.read(4))
        value_start = handle.tell()
        n_frames = int(header.get("NumberOfFrames", 1))
        if not syntax.is_encapsulated:
            needed = -(-n_frames * int(header.Rows) * int(header.Columns)
                       * int(header.BitsAllocated) // 8)
            if length < needed:
                raise SegmentationInputError(
                    f"The Pixel Data holds {length} bytes, but {n_frames} frames of "
                    f"{header.Rows} x {header.Columns} x {header.BitsAllocated} bits need "
                    f"{needed}: the file is truncated or its header is wrong."
                )
        codec = _Codec(
            kind=kinds.get(syntax, "native"),
            rows=int(header.Rows),
            columns=int(header.Columns),
            bits_allocated=int(header.BitsAllocated),
            pixel_offset=value_start,
        )
        if not syntax.is_encapsulated:
            return codec, None

        # Encapsulated (PS3.5 A.4): a Basic Offset Table item, then one item per fragment.
        try:
            bot = parse_basic_offsets(handle)
            first_fragment = handle.tell()
            _, items = parse_fragments(handle)
        except ValueError as error:
            raise SegmentationInputError(f"Corrupt encapsulated Pixel Data: {error}") from error
        if "ExtendedOffsetTable" in header:
            # PS3.3 C.7.6.3.1.8: one fragment per frame, offsets to its item header.
            offsets = np.frombuffer(header.ExtendedOffsetTable, "<u8")
            lengths = np.frombuffer(header.ExtendedOffsetTableLengths, "<u8")
            return codec, [
                [(first_fragment + int(o) + 8, int(n))] for o, n in zip(offsets, lengths)
            ]
        if not items:
            raise SegmentationInputError("The encapsulated Pixel Data holds no fragments.")
        # An item's value runs from after its 8-byte header to the next item (the last one's
        # length is read from its header).
        handle.seek(items[-1] + 4)
        (last_length,) = struct.unpack("<I", handle.read(4))
        ends = items[1:] + [items[-1] + 8 + last_length]
        fragments = [(start + 8, end - start - 8) for start, end in zip(items, ends)]
        if bot:
            first_of_frame = {item - first_fragment: k for k, item in enumerate(items)}
            try:
                bounds = [first_of_frame[offset] for offset in bot] + [len(fragments)]
            except KeyError as error:
                raise SegmentationInputError(
                    f"The Basic Offset Table points at byte {error.args[0]}, where no fragment "
                    "starts: the file is corrupt."
                ) from None
            return codec, [fragments[bounds[i] : bounds[i + 1]] for i in range(len(bot))]
        if len(fragments) == n_frames:
            return codec, [[fragment] for fragment in fragments]
        if n_frames == 1:
            return codec, [fragments]
        raise SegmentationInputError(
            f"{len(fragments)} fragments for {n_frames} frames and no offset table: frames "
            "split over several fragments need a Basic or Extended Offset Table."
        )

    def _index_frames(self, header: Dataset) -> np.ndarray:
        """Frame index (0-based, -1 if absent) of each (channel, tile row, tile column)."""
        labelmap = self.segmentation_type == "LABELMAP"
        n_channels = 1 if labelmap else len(self.segment_numbers)
        table = np.full((n_channels, *self.grid_shape), -1, dtype=np.int64)
        if header.get("DimensionOrganizationType") == "TILED_FULL":
            # PS3.3 C.7.6.17.3: implicit order, segment slowest, then tile row, then column.
            if self.number_of_frames != table.size:
                raise SegmentationInputError(
                    f"A TILED_FULL SEG of {n_channels} x {self.grid_shape[0]} x "
                    f"{self.grid_shape[1]} frames (channels x tile rows x tile columns) says it "
                    f"has {self.number_of_frames}: the header is inconsistent."
                )
            table.reshape(-1)[:] = np.arange(table.size)
            return table
        shared = header.SharedFunctionalGroupsSequence[0]
        shared_segment = None
        if "SegmentIdentificationSequence" in shared:
            shared_segment = int(shared.SegmentIdentificationSequence[0].ReferencedSegmentNumber)
        channel_of = {number: k for k, number in enumerate(self.segment_numbers)}
        tile_rows, tile_columns = self.tile_size
        for index, item in enumerate(header.PerFrameFunctionalGroupsSequence):
            position = item.PlanePositionSlideSequence[0]
            row, row_offset = divmod(int(position.RowPositionInTotalImagePixelMatrix) - 1,
                                     tile_rows)
            column, column_offset = divmod(
                int(position.ColumnPositionInTotalImagePixelMatrix) - 1, tile_columns
            )
            if row_offset or column_offset or not (
                0 <= row < self.grid_shape[0] and 0 <= column < self.grid_shape[1]
            ):
                raise SegmentationInputError(
                    f"Frame {index + 1} is at row {row * tile_rows + row_offset + 1}, column "
                    f"{column * tile_columns + column_offset + 1} of the total pixel matrix, "
                    f"not at a tile of the {tile_rows} x {tile_columns} grid; daskseg reads "
                    "SEGs whose frames are the tiles of the image (use highdicom for others)."
                )
            if labelmap:
                channel = 0
            elif "SegmentIdentificationSequence" in item:
                channel = channel_of[
                    int(item.SegmentIdentificationSequence[0].ReferencedSegmentNumber)
                ]
            elif shared_segment is not None:
                channel = channel_of[shared_segment]
            else:
                raise SegmentationInputError(
                    f"Frame {index + 1} names no segment (no SegmentIdentificationSequence): "
                    "the SEG is invalid."
                )
            table[channel, row, column] = index
        return table

    # --------------------------------------------------------------- arrays

    def to_dask(
        self,
        *,
        segment_numbers: Sequence[int] | None = None,
        combine_segments: bool = False,
        relabel: bool = False,
        rescale_fractional: bool = True,
        dtype: Any = None,
        chunks: int | tuple[int, int] | None = None,
    ) -> da.Array:
        """The total pixel matrix as a lazy Dask array; see :func:`read_segmentation`."""
        numbers = list(self.segment_numbers if segment_numbers is None else segment_numbers)
        if not numbers:
            raise SegmentationInputError(
                f"segment_numbers is empty; give some of {self.segment_numbers}, or None for all."
            )
        unknown = sorted(set(numbers) - set(self.segment_numbers))
        if unknown:
            raise SegmentationInputError(
                f"Segment numbers {unknown} are not in this SEG; it holds {self.segment_numbers}."
            )
        output = self._output(numbers, combine_segments, relabel, rescale_fractional, dtype)
        labelmap = self.segmentation_type == "LABELMAP"
        dtype = np.dtype(output.dtype)

        tile_rows, tile_columns = self.tile_size
        if chunks is None:
            chunks = (2048, 2048)
        elif isinstance(chunks, int):
            chunks = (chunks, chunks)
        row_chunks = aligned_chunks(self.shape[0], tile_rows, chunks[0], max_tiles=64)
        column_chunks = aligned_chunks(self.shape[1], tile_columns, chunks[1], max_tiles=64)
        channels = [0] if labelmap else [self.segment_numbers.index(n) for n in numbers]
        out_chunks: tuple[tuple[int, ...], ...] = (row_chunks, column_chunks)
        if not combine_segments:
            out_chunks += ((len(numbers),),)
        token = dask.base.tokenize(
            self.path, os.path.getmtime(self.path) if os.path.exists(self.path) else 0,
            output, out_chunks,
        )
        name = f"decode-seg-{token}"
        graph: dict = {}
        row_start = 0
        for i, n_rows in enumerate(row_chunks):
            column_start = 0
            for j, n_columns in enumerate(column_chunks):
                tile_row, tile_column = row_start // tile_rows, column_start // tile_columns
                tiles = (-(-n_rows // tile_rows), -(-n_columns // tile_columns))
                frames = []
                for channel in channels:
                    block = self._frame_table[
                        channel, tile_row : tile_row + tiles[0], tile_column : tile_column + tiles[1]
                    ].ravel()
                    frames.append([
                        None if index < 0 else (int(index), self._ranges(int(index)))
                        for index in block
                    ])
                task = (_read_chunk, self.path, self._codec, frames, tiles, (n_rows, n_columns),
                        output)
                key = (name, i, j) if combine_segments else (name, i, j, 0)
                graph[key] = task
                column_start += n_columns
            row_start += n_rows
        meta = np.empty((0,) * len(out_chunks), dtype=dtype)
        return da.Array(HighLevelGraph.from_collections(name, graph, dependencies=[]), name,
                        out_chunks, meta=meta)

    def _output(
        self, numbers: list[int], combine_segments: bool, relabel: bool,
        rescale_fractional: bool, dtype: Any,
    ) -> _Output:
        """Check the options as highdicom does, and say what the tasks make of the values."""
        fractional = self.segmentation_type == "FRACTIONAL"
        if fractional and combine_segments and not rescale_fractional:
            raise SegmentationInputError(
                "The segments of a FRACTIONAL SEG can be combined only with "
                "rescale_fractional=True (as in highdicom)."
            )
        labels = list(range(1, len(numbers) + 1)) if relabel else numbers
        largest = max(labels) if combine_segments else 1
        rescale = fractional and rescale_fractional and not combine_segments
        if dtype is None:
            dtype = np.float32 if rescale else _smallest_uint(largest)
        try:
            dtype = np.dtype(dtype)
        except TypeError as error:
            raise SegmentationTypeError(f"dtype {dtype!r} is not a NumPy data type.") from error
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
        background = 0
        if self.segmentation_type == "LABELMAP" and combine_segments and not relabel:
            # highdicom keeps the stored background (PixelPaddingValue) when it does not relabel.
            background = int(self.header.get("PixelPaddingValue", 0))
        return _Output(
            segmentation_type=self.segmentation_type,
            combine_segments=combine_segments,
            numbers=tuple(numbers),
            labels=tuple(labels),
            background=background,
            max_fractional=int(self.header.MaximumFractionalValue) if fractional else None,
            rescale=rescale,
            dtype=dtype.str,
        )

    def _ranges(self, index: int) -> list[tuple[int, int]]:
        if self._frame_ranges is None:
            return self._codec.ranges(index)
        return self._frame_ranges[index]

    def to_zarr(
        self,
        store: Any,
        *,
        segment_numbers: Sequence[int] | None = None,
        combine_segments: bool = False,
        relabel: bool = False,
        rescale_fractional: bool = True,
        dtype: Any = None,
        chunks: int | tuple[int, int] | None = None,
        overwrite: bool = False,
        progress: bool = False,
        client: Any = None,
    ):
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
        import zarr
        from distributed import default_client

        array = self.to_dask(
            segment_numbers=segment_numbers, combine_segments=combine_segments, relabel=relabel,
            rescale_fractional=rescale_fractional, dtype=dtype, chunks=chunks,
        )
        target = zarr.create_array(
            store, shape=array.shape, chunks=tuple(c[0] for c in array.chunks),
            dtype=array.dtype, overwrite=overwrite,
        )
        # dask's annotations do not list zarr arrays among the targets it accepts.
        stores = da.store(
            array, target, lock=False, compute=False, return_stored=False  # type: ignore[arg-type]
        )
        if client is None:
            try:
                client = default_client()
            except ValueError:
                client = None
        n_blocks = int(np.prod(array.numblocks))
        with progress_bar(n_blocks, "decoding blocks", enabled=progress, client=client,
                          unit="block") as bar:
            if client is None:
                from dask.callbacks import Callback

                class _Count(Callback):
                    def _posttask(self, key, result, dsk, state, worker_id):
                        if isinstance(key, tuple) and str(key[0]).startswith("store-map"):
                            bar.update(1)

                with _Count():
                    dask.compute(stores)  # the configured local scheduler
            else:
                # One task per block, each reading its frames and writing its region: memory
                # on each worker is one block at a time, whatever the SEG's size.
                stored = array.map_blocks(_store_block, target=target, dtype=np.int64,
                                          chunks=tuple((1,) * n for n in array.numblocks))
                for _ in run_windowed(client, block_tasks(stored).ravel().tolist(),
                                      "decode a block of the SEG into Zarr"):
                    bar.update(1)
        return target


def _store_block(block: np.ndarray, target: Any, block_info: dict | None = None) -> np.ndarray:
    """Write one block into its region of the Zarr array; return a 1-element marker."""
    target[tuple(slice(start, stop) for start, stop in block_info[0]["array-location"])] = block
    return np.ones((1,) * block.ndim, dtype=np.int64)


def open_segmentation(path: str | os.PathLike) -> SegmentationReader:
    """Open a SEG of a tiled image for lazy, parallel reading (header only).

    Parameters
    ----------
    path : str or os.PathLike
        A local path or an fsspec URL.

    Returns
    -------
    SegmentationReader
        Its segments, type and tile grid, and ``to_dask`` / ``to_zarr``.

    Examples
    --------
    >>> seg = open_segmentation("seg.dcm")  # doctest: +SKIP
    >>> seg.segment_numbers, seg.grid_shape  # doctest: +SKIP
    ([1, 2, 3], (32, 32))
    """
    if not isinstance(path, (str, os.PathLike)):
        raise SegmentationTypeError(f"path must be a str or os.PathLike, not {type(path).__name__}.")
    return SegmentationReader(path)


def read_segmentation(
    path: str | os.PathLike,
    *,
    segment_numbers: Sequence[int] | None = None,
    combine_segments: bool = False,
    relabel: bool = False,
    rescale_fractional: bool = True,
    dtype: Any = None,
    chunks: int | tuple[int, int] | None = None,
) -> da.Array:
    """Read a SEG of a tiled image as a lazy Dask array of its total pixel matrix.

    The values equal highdicom's ``Segmentation.get_total_pixel_matrix`` with the same
    arguments; frames are decoded in parallel by the tasks, and only those a slice touches.

    Parameters
    ----------
    path : str or os.PathLike
        A local path or an fsspec URL.
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
        Chunk size in pixels, rounded to whole tiles; about 2048 by default.

    Returns
    -------
    dask.array.Array
        ``(rows, columns, len(segment_numbers))`` stacked, or ``(rows, columns)`` combined.
        A LABELMAP SEG is its stored labels when combined (only the requested ones; others
        read as background) and one-hot planes of the requested labels when not.

    Raises
    ------
    SegmentationInputError
        The file is not a SEG of a tiled image, is corrupt, or the options do not fit it
        (unknown segment numbers, a dtype too small, FRACTIONAL combined without rescaling).
    RuntimeError, ValueError
        When computed, as highdicom: segments overlap and cannot be combined, or FRACTIONAL
        values are not all 0 or MaximumFractionalValue and cannot be combined.

    Notes
    -----
    One deliberate difference from highdicom 0.28: for a LABELMAP SEG combined without
    ``relabel``, highdicom also keeps a label that was not requested when exactly one of the
    SEG's segments is left out; daskseg reads every label that was not requested as background.

    Examples
    --------
    >>> labels = read_segmentation("seg.dcm", combine_segments=True)  # doctest: +SKIP
    >>> labels[:1024, :1024].compute()  # decodes only the frames of that region  # doctest: +SKIP
    """
    return open_segmentation(path).to_dask(
        segment_numbers=segment_numbers, combine_segments=combine_segments, relabel=relabel,
        rescale_fractional=rescale_fractional, dtype=dtype, chunks=chunks,
    )
