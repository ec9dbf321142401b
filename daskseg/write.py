"""Header + streamed pixel data + offset tables + atomic rename: the SEG writer.

The pipeline of :func:`write_segmentation`:

1. Check every input on the client, before any work reaches the cluster.
2. Build the header with highdicom's own ``Segmentation`` class on a *proxy*: the same source,
   segments and options, but a total pixel matrix of one tile, so highdicom fills every module
   (patient, study, specimen, SegmentSequence, dimensions, shared functional groups, derivation
   references) without ever seeing the mask.
3. Map blocks of whole tiles to :func:`daskseg.encode.encode_block` on the workers, a bounded
   window of tasks in flight; each result is appended to a spool file next to the destination as
   it arrives, in whatever order the workers finish.
4. Write the file: header (patched with the mask's size, frame count and overlap), per-frame
   functional groups streamed item by item for TILED_SPARSE, then the frames in file order from
   the spool with a Basic Offset Table, or an Extended Offset Table past 4 GiB.
5. Rename into place; on any error remove every temporary file.
"""

from __future__ import annotations

import contextlib
import math
import os
import pathlib
import struct
import tempfile
import uuid
from collections.abc import Iterator, Sequence
from typing import Any, BinaryIO

import dask
import dask.array as da
import highdicom as hd
import numpy as np
import pydicom
from highdicom.spatial import compute_tile_positions_per_frame
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.encaps import itemize_frame
from pydicom.filebase import DicomBytesIO
from pydicom.filewriter import write_dataset
from pydicom.uid import (
    UID,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    JPEG2000Lossless,
    JPEGLSLossless,
    RLELossless,
)

from daskseg._client import cluster_client
from daskseg._progress import progress_bar
from daskseg._series import is_volume_source
from daskseg._source import load_source_image
from daskseg._tasks import block_tasks, run_windowed
from daskseg.encode import BlockResult, encode_chunk, encode_frame
from daskseg.errors import (
    DestinationExistsError,
    SegmentationInputError,
    SegmentationTypeError,
)
from daskseg.plan import FrameSpec, TileGrid, aligned_chunks, included_frames, spatial_index_values

__all__ = ["write_segmentation", "ALLOWED_TRANSFER_SYNTAXES"]

#: Transfer syntaxes per segmentation type, as highdicom 0.28 allows them (all lossless).
ALLOWED_TRANSFER_SYNTAXES: dict[str, tuple[UID, ...]] = {
    "BINARY": (ExplicitVRLittleEndian, ImplicitVRLittleEndian, JPEG2000Lossless),
    "FRACTIONAL": (
        ExplicitVRLittleEndian,
        ImplicitVRLittleEndian,
        JPEG2000Lossless,
        JPEGLSLossless,
        RLELossless,
    ),
    "LABELMAP": (
        ExplicitVRLittleEndian,
        ImplicitVRLittleEndian,
        JPEG2000Lossless,
        JPEGLSLossless,
        RLELossless,
    ),
}

_MAX_NATIVE_BYTES = 0xFFFFFFFE  # a native Pixel Data element has a 32-bit, even length
_MAX_BOT_OFFSET = 0xFFFFFFFF  # Basic Offset Table entries are 32-bit
_PFFG_TAG = 0x52009230  # Per-frame Functional Groups Sequence
_UNDEFINED = 0xFFFFFFFF


# --------------------------------------------------------------------------- inputs


def _as_dask_array(mask: Any) -> da.Array:
    """Wrap any supported mask as a Dask array without reading it."""
    import zarr

    if isinstance(mask, da.Array):
        return mask
    if isinstance(mask, np.ndarray):
        # Named, not tokenized: hashing a large mask would read all of it on the client.
        return da.from_array(mask, chunks=mask.shape, name=f"numpy-mask-{uuid.uuid4().hex}")
    if isinstance(mask, (str, os.PathLike)):
        try:
            mask = zarr.open_array(str(mask), mode="r")
        except Exception as error:  # zarr raises several types for a missing or bad store
            hint = ""
            with contextlib.suppress(Exception):  # a group: name the arrays it holds
                names = sorted(zarr.open_group(str(mask), mode="r").array_keys())
                hint = (f" It is a Zarr group; give the path of one of its arrays: "
                        f"{', '.join(names) or '(it holds none)'}.")
            raise SegmentationInputError(
                f"Could not open the mask {str(mask)!r} as a Zarr array: "
                f"{str(error).rstrip('.')}.{hint}"
            ) from error
    if isinstance(mask, zarr.Array):
        return da.from_zarr(mask)
    raise SegmentationTypeError(
        "mask must be a dask array, a zarr array, the path or URL of a Zarr array, or a numpy "
        f"array, not {type(mask).__name__}."
    )


def _numpy_blocks(mask: np.ndarray, rows: tuple[int, ...], columns: tuple[int, ...]) -> da.Array:
    """A Dask array of an in-memory mask whose every block holds only its own slice.

    ``da.from_array`` would put the whole array in one graph key, sent again with every window
    of block tasks; a view per block sends each block's pixels once.
    """
    token = uuid.uuid4().hex
    row_starts = np.cumsum((0,) + rows[:-1])
    column_starts = np.cumsum((0,) + columns[:-1])

    def block(i: int, j: int) -> da.Array | list[da.Array]:
        r, c = row_starts[i], column_starts[j]
        piece = da.from_array(
            mask[r : r + rows[i], c : c + columns[j]], chunks=-1,
            name=f"numpy-mask-{token}-{i}-{j}",
        )
        # da.block nests one list level per axis: the segment axis has one block.
        return [piece] if mask.ndim == 3 else piece

    return da.block([[block(i, j) for j in range(len(columns))] for i in range(len(rows))])


def _segment_numbers(segment_descriptions: Sequence[hd.seg.SegmentDescription]) -> list[int]:
    if isinstance(segment_descriptions, (str, bytes)) or not isinstance(
        segment_descriptions, Sequence
    ):
        raise SegmentationTypeError(
            "segment_descriptions must be a sequence of highdicom SegmentDescription objects."
        )
    if len(segment_descriptions) == 0:
        raise SegmentationInputError(
            "No segment descriptions were given; describe each segment of the mask with a "
            "highdicom.seg.SegmentDescription."
        )
    for item in segment_descriptions:
        if not isinstance(item, hd.seg.SegmentDescription):
            raise SegmentationTypeError(
                "Each segment description must be a highdicom.seg.SegmentDescription, "
                f"not {type(item).__name__}."
            )
    numbers = [int(item.SegmentNumber) for item in segment_descriptions]
    if numbers != list(range(1, len(numbers) + 1)):
        raise SegmentationInputError(
            f"Segment numbers must run 1..{len(numbers)} in order, got {numbers}."
        )
    return numbers


def _check_destination(path: str | os.PathLike, overwrite: bool) -> pathlib.Path:
    path = pathlib.Path(path)
    if not path.parent.is_dir():
        raise SegmentationInputError(
            f"The destination folder {path.parent} does not exist; create it first."
        )
    if path.is_dir():
        raise SegmentationInputError(f"The destination {path} is a folder; give a file name.")
    if path.exists() and not overwrite:
        raise DestinationExistsError(
            f"{path} exists; pass overwrite=True to replace it."
        )
    return path


def _normalize_mask(
    mask: da.Array, n_segments: int, expected: tuple[int, int] | None
) -> tuple[da.Array, bool]:
    """Drop a leading axis of length 1; return the mask and whether segments are stacked.

    A 3-D mask of one row, ``(1, columns, segments)``, is a stack when its shape matches the
    source's total pixel matrix (or, without one to compare, its last axis has one entry per
    segment); otherwise ``(1, rows, columns)`` is a label image with a leading axis.
    """
    if mask.ndim == 4 and mask.shape[0] == 1:
        mask = mask[0]
    elif mask.ndim == 3 and mask.shape[0] == 1:
        is_stack = (
            tuple(mask.shape[:2]) == expected if expected is not None
            else mask.shape[2] == n_segments
        )
        if not is_stack:
            mask = mask[0]
    if mask.ndim == 2:
        stacked = False
    elif mask.ndim == 3:
        stacked = True
        if mask.shape[2] != n_segments:
            raise SegmentationInputError(
                f"The mask stacks {mask.shape[2]} segment planes on its last axis, but "
                f"{n_segments} segments are described; give one description per plane."
            )
    else:
        raise SegmentationInputError(
            f"The mask has {mask.ndim} dimensions {tuple(mask.shape)}; expected a label image "
            "(rows, columns) or a stack (rows, columns, segments), optionally with a leading "
            "axis of length 1."
        )
    kind = mask.dtype.kind
    if kind not in "buif":
        raise SegmentationTypeError(
            f"The mask's dtype {mask.dtype} is not boolean, integer or floating point."
        )
    if kind == "f" and not stacked:
        raise SegmentationTypeError(
            "A label image must hold integers (segment numbers), not floating point values; "
            "stack one plane per segment on the last axis for fractional masks."
        )
    return mask, stacked


def _tile_size(tile_size: Sequence[int] | None, source: Dataset) -> tuple[int, int]:
    if tile_size is None:
        return int(source.Rows), int(source.Columns)
    if isinstance(tile_size, int):
        tile_size = (tile_size, tile_size)
    try:
        rows, columns = (int(v) for v in tile_size)
    except (TypeError, ValueError) as error:
        raise SegmentationTypeError(
            f"tile_size must be two integers (rows, columns), got {tile_size!r}."
        ) from error
    if rows < 1 or columns < 1:
        raise SegmentationInputError(
            f"tile_size must be positive, got {rows} x {columns}."
        )
    return rows, columns


# --------------------------------------------------------------------------- header


def _proxy_header(
    source: Dataset,
    stacked: bool,
    dtype: np.dtype,
    n_segments: int,
    tile: tuple[int, int],
    hd_options: dict[str, Any],
) -> Dataset:
    """The SEG header that highdicom builds for a one-tile total pixel matrix."""
    # A new dict of the same elements (not a copy of the Dataset, whose elements would be shared
    # and changed in the caller's source), with its own total pixel matrix size.
    size_tags = (0x00480006, 0x00480007)  # TotalPixelMatrixColumns, TotalPixelMatrixRows
    proxy_source = Dataset({tag: elem for tag, elem in source.items() if tag not in size_tags})
    proxy_source.TotalPixelMatrixRows, proxy_source.TotalPixelMatrixColumns = tile
    # One non-zero pixel per segment, on different pixels: every segment present, none
    # overlapping, so highdicom takes the same branches as for the real mask.
    shape = (1, *tile, n_segments) if stacked else (1, *tile)
    # highdicom branches on the kind of values (bool, unsigned, float), and takes no signed or
    # wide integers: those map to the unsigned type that holds every segment number.
    if dtype.kind in "iu":
        dtype = np.dtype(np.uint8 if n_segments < 256 else np.uint16)
    proxy = np.zeros(shape, dtype=dtype)
    flat = proxy.reshape(-1, n_segments) if stacked else proxy.reshape(-1)
    for index in range(min(n_segments, flat.shape[0])):
        if stacked:
            flat[index, index] = 1
        else:
            flat[index] = index + 1
    # The proxy's one frame is left native: the transfer syntax changes nothing in the header
    # but the file meta, and highdicom's own encoders fail on some valid frames (JPEG-LS tiles
    # smaller than 4 x 4) that daskseg's encoders take.
    seg = hd.seg.Segmentation(
        source_images=[proxy_source],
        pixel_array=proxy,
        tile_pixel_array=True,
        tile_size=tile,
        omit_empty_frames=False,
        **{**hd_options, "transfer_syntax_uid": ExplicitVRLittleEndian},
    )
    header = Dataset()
    header.update(seg)
    header.file_meta = FileMetaDataset(seg.file_meta)
    header.file_meta.TransferSyntaxUID = hd_options["transfer_syntax_uid"]
    if "FileMetaInformationGroupLength" in header.file_meta:
        del header.file_meta.FileMetaInformationGroupLength  # pydicom computes it when writing
    for keyword in ("PixelData", "PerFrameFunctionalGroupsSequence", "ExtendedOffsetTable",
                    "ExtendedOffsetTableLengths"):
        if keyword in header:
            del header[keyword]
    # Type 2 attributes that highdicom leaves out unless given; dciodvfy asks for them.
    if "ContentCreatorName" not in header:
        header.ContentCreatorName = ""
    if "PatientOrientation" not in header:
        header.PatientOrientation = ""
    return header


def _explicit_header(tag: int, vr: str, length: int, implicit: bool) -> bytes:
    group, element = tag >> 16, tag & 0xFFFF
    if implicit:
        return struct.pack("<HHI", group, element, length)
    if vr in ("OB", "OW", "OV", "SQ", "UN", "UT", "OF", "OD", "OL", "UC", "UR"):
        return struct.pack("<HH2sHI", group, element, vr.encode(), 0, length)
    return struct.pack("<HH2sH", group, element, vr.encode(), length)


def _serialize(dataset: Dataset, implicit: bool) -> bytes:
    """The encoded elements of a dataset (no item header), little endian."""
    buffer = DicomBytesIO()
    buffer.is_little_endian = True
    buffer.is_implicit_VR = implicit
    write_dataset(buffer, dataset)
    return buffer.getvalue()


def _item(body: bytes) -> bytes:
    return struct.pack("<HHI", 0xFFFE, 0xE000, len(body)) + body


class _FrameItems:
    """Per-frame functional group items of a TILED_SPARSE SEG, serialized one at a time.

    No pydicom object outlives the item it describes: a SEG of 100k frames would otherwise hold
    100k nested Datasets in memory. The parts are encoded once each (the plane position once per
    tile, the segment identification once per segment) and joined per frame; only the dimension
    index values are packed per frame. The items equal highdicom's (``_get_pffg_item``).
    """

    def __init__(self, header: Dataset, grid: TileGrid, options: dict[str, Any], labelmap: bool,
                 tile_nonempty: np.ndarray, n_segments: int, implicit: bool) -> None:
        origin = header.TotalPixelMatrixOriginSequence[0]
        position = options.get("plane_positions")
        if position is not None:
            origin = position[0][0]
        image_position = (
            origin.XOffsetInSlideCoordinateSystem,
            origin.YOffsetInSlideCoordinateSystem,
            origin.get("ZOffsetInSlideCoordinateSystem", 0.0),
        )
        spacing = header.SharedFunctionalGroupsSequence[0].PixelMeasuresSequence[0].PixelSpacing
        # Row-major tile order: index = tile_row * n_tile_columns + tile_column.
        self._positions = compute_tile_positions_per_frame(
            rows=grid.tile_rows,
            columns=grid.tile_columns,
            total_pixel_matrix_rows=grid.rows,
            total_pixel_matrix_columns=grid.columns,
            total_pixel_matrix_image_position=image_position,
            image_orientation=header.ImageOrientationSlide,
            pixel_spacing=spacing,
        )
        self._n_tile_columns = grid.n_tile_columns
        self._row_index, self._column_index = spatial_index_values(tile_nonempty)
        self._labelmap = labelmap
        self._implicit = implicit
        self._position_parts: dict[int, bytes] = {}

        # Type 2: tiles of a total pixel matrix have no one source frame (as highdicom).
        derivation = Dataset()
        derivation.add_new(0x00089124, "SQ", [])  # DerivationImageSequence
        self._derivation_part = _serialize(derivation, implicit)
        self._segment_parts = [b""] * n_segments
        if not labelmap and n_segments > 1:  # one segment goes in the shared groups
            for channel in range(n_segments):
                identification = Dataset()
                identification.add_new(0x0062000B, "US", channel + 1)  # ReferencedSegmentNumber
                part = Dataset()
                part.add_new(0x0062000A, "SQ", [identification])  # SegmentIdentificationSequence
                self._segment_parts[channel] = _serialize(part, implicit)

    def _position_part(self, tile: int) -> bytes:
        part = self._position_parts.get(tile)
        if part is None:
            (column_position, row_position), coordinates = self._positions[tile]
            dataset = Dataset()
            dataset.add_new(
                0x0048021A,  # PlanePositionSlideSequence
                "SQ",
                hd.PlanePositionSequence(
                    hd.CoordinateSystemNames.SLIDE,
                    image_position=coordinates,
                    pixel_matrix_position=(column_position, row_position),
                ),
            )
            part = self._position_parts[tile] = _serialize(dataset, self._implicit)
        return part

    def item(self, channel: int, tile_row: int, tile_column: int) -> bytes:
        spatial = (int(self._row_index[tile_row]), int(self._column_index[tile_column]))
        index_values = spatial if self._labelmap else (channel + 1, *spatial)
        values = struct.pack(f"<{len(index_values)}I", *index_values)
        content = _item(_explicit_header(0x00209157, "UL", len(values), self._implicit) + values)
        frame_content = _explicit_header(0x00209111, "SQ", len(content), self._implicit) + content
        tile = tile_row * self._n_tile_columns + tile_column
        # Elements in tag order: (0008,9124), (0020,9111), (0048,021A), (0062,000A).
        return _item(
            self._derivation_part
            + frame_content
            + self._position_part(tile)
            + self._segment_parts[channel if not self._labelmap else 0]
        )


# --------------------------------------------------------------------------- encoding


class _Spool:
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


def _block_tasks(mask: da.Array, spec: FrameSpec) -> list[tuple[int, Any]]:
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


def _encode_blocks(
    client: Any,
    tasks: list[tuple[int, Any]],
    spool: _Spool,
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


# --------------------------------------------------------------------------- file


def _write_pixel_data(
    out: BinaryIO,
    spool: _Spool,
    order: np.ndarray,
    spec: FrameSpec,
    grid: TileGrid,
    implicit: bool,
    use_extended_offset_table: bool | None,
    empty_frame: bytes | None,
) -> None:
    """Append the (extended) offset tables and Pixel Data, frames in file order."""

    def frames() -> Iterator[bytes]:
        for channel, tile_row, tile_column in order:
            if spool.lengths[channel, tile_row, tile_column] < 0:
                yield empty_frame
            else:
                yield spool.read(channel, tile_row, tile_column)

    n_frames = len(order)
    if spec.is_native:
        bits = spec.bits_allocated * grid.pixels_per_frame * n_frames
        length = -(-bits // 8)
        length += length % 2  # write_segmentation checked that it fits 32 bits
        vr = "OB" if spec.bits_allocated <= 8 else "OW"
        out.write(_explicit_header(0x7FE00010, vr, length, implicit))
        written = 0
        if spec.bits_allocated == 1 and grid.pixels_per_frame % 8:
            # PS3.5 8.1.1: 1-bit frames are packed back to back, so a frame that does not fill
            # whole bytes starts mid-byte; carry the leftover bits into the next frame.
            carry = np.zeros(0, dtype=np.uint8)
            for data in frames():
                bits_ = np.unpackbits(
                    np.frombuffer(data, dtype=np.uint8), bitorder="little"
                )[: grid.pixels_per_frame]
                bits_ = np.concatenate([carry, bits_])
                whole = len(bits_) - len(bits_) % 8
                chunk = np.packbits(bits_[:whole], bitorder="little").tobytes()
                out.write(chunk)
                written += len(chunk)
                carry = bits_[whole:]
            if len(carry):
                chunk = np.packbits(carry, bitorder="little").tobytes()
                out.write(chunk)
                written += len(chunk)
        else:
            for data in frames():
                out.write(data)
                written += len(data)
        out.write(b"\x00" * (length - written))
        return

    # Encapsulated (PS3.5 A.4): each frame one fragment, padded to even length.
    lengths = np.array(
        [
            len(empty_frame) if spool.lengths[c, r, k] < 0 else spool.lengths[c, r, k]
            for c, r, k in order
        ],
        dtype=np.int64,
    )
    item_sizes = 8 + lengths + lengths % 2
    offsets = np.concatenate([[0], np.cumsum(item_sizes)[:-1]]).astype(np.uint64)
    total = int(item_sizes.sum())
    extended = use_extended_offset_table
    if extended is None:
        extended = total > _MAX_BOT_OFFSET
    if not extended and n_frames and int(offsets[-1]) > _MAX_BOT_OFFSET:
        raise SegmentationInputError(
            "The encoded frames pass 4 GiB, beyond a Basic Offset Table; "
            "pass use_extended_offset_table=True or None."
        )
    if extended:
        table = offsets.astype("<u8").tobytes()
        out.write(_explicit_header(0x7FE00001, "OV", len(table), implicit) + table)
        sizes = lengths.astype("<u8").tobytes()
        out.write(_explicit_header(0x7FE00002, "OV", len(sizes), implicit) + sizes)
    out.write(_explicit_header(0x7FE00010, "OB", _UNDEFINED, implicit))
    if extended:
        out.write(struct.pack("<HHI", 0xFFFE, 0xE000, 0))
    else:
        bot = offsets.astype("<u4").tobytes()
        out.write(struct.pack("<HHI", 0xFFFE, 0xE000, len(bot)) + bot)
    for data in frames():
        for item in itemize_frame(data, nr_fragments=1):
            out.write(item)
    out.write(struct.pack("<HHI", 0xFFFE, 0xE0DD, 0))


def _write_file(
    destination: pathlib.Path,
    header: Dataset,
    spool: _Spool,
    spec: FrameSpec,
    grid: TileGrid,
    tiled_full: bool,
    tile_nonempty: np.ndarray,
    hd_options: dict[str, Any],
    use_extended_offset_table: bool | None,
    items: Any = None,
) -> pathlib.Path:
    """Write header, per-frame items and pixel data to a temporary file; return its path.

    ``items`` serializes the per-frame items (``item(channel, tile_row, tile_column)``); a
    tiled image's by default.
    """
    implicit = header.file_meta.TransferSyntaxUID == ImplicitVRLittleEndian
    empty_frame = None
    if tiled_full or not spec.omit_empty_frames:
        order = np.argwhere(np.ones(spool.lengths.shape, dtype=bool))
    elif not tile_nonempty.any():
        # highdicom keeps every frame of an all-empty mask: omitting all is not possible.
        order = np.argwhere(np.ones(spool.lengths.shape, dtype=bool))
        tile_nonempty = np.ones_like(tile_nonempty)
    else:
        order = included_frames(spool.lengths)
    if (spool.lengths[tuple(order.T)] < 0).any():
        dtype = np.uint8 if spec.bits_allocated <= 8 else np.uint16
        empty_frame = encode_frame(np.zeros((grid.tile_rows, grid.tile_columns), dtype), spec)

    header.NumberOfFrames = len(order)
    body = Dataset({e.tag: e for e in header if e.tag < _PFFG_TAG})
    body.file_meta = header.file_meta
    late = [e for e in header if e.tag >= _PFFG_TAG]
    if late:
        raise RuntimeError(f"Unexpected attributes after the functional groups: {late}")

    handle, temporary = tempfile.mkstemp(prefix=f".{destination.name}.", suffix=".tmp",
                                         dir=destination.parent)
    try:
        with os.fdopen(handle, "wb") as out:
            pydicom.dcmwrite(out, body, enforce_file_format=True)
            if not tiled_full:
                items = items or _FrameItems(
                    header, grid, hd_options, spec.segmentation_type == "LABELMAP",
                    tile_nonempty, spec.n_segments, implicit,
                )
                out.write(_explicit_header(_PFFG_TAG, "SQ", _UNDEFINED, implicit))
                for channel, tile_row, tile_column in order:
                    out.write(items.item(int(channel), int(tile_row), int(tile_column)))
                out.write(struct.pack("<HHI", 0xFFFE, 0xE0DD, 0))
            _write_pixel_data(out, spool, order, spec, grid, implicit,
                              use_extended_offset_table, empty_frame)
            out.flush()
            os.fsync(out.fileno())
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(temporary)
        raise
    return pathlib.Path(temporary)


# --------------------------------------------------------------------------- public


def write_segmentation(
    mask: Any,
    source_image: Dataset | str | os.PathLike,
    segment_descriptions: Sequence[hd.seg.SegmentDescription],
    path: str | os.PathLike,
    *,
    segmentation_type: str = "BINARY",
    transfer_syntax_uid: str = ExplicitVRLittleEndian,
    tile_size: Sequence[int] | int | None = None,
    dimension_organization_type: str | None = None,
    omit_empty_frames: bool | None = None,
    max_fractional_value: int = 255,
    fractional_type: str = "PROBABILITY",
    series_instance_uid: str | None = None,
    series_number: int = 1,
    sop_instance_uid: str | None = None,
    instance_number: int = 1,
    manufacturer: str = "daskseg",
    manufacturer_model_name: str = "daskseg",
    software_versions: str | None = None,
    device_serial_number: str = "1",
    content_label: str | None = None,
    content_description: str | None = None,
    content_creator_name: str | None = None,
    use_extended_offset_table: bool | None = None,
    client: Any = None,
    overwrite: bool = False,
    progress: bool = False,
    **highdicom_options: Any,
) -> pathlib.Path:
    """Write a DICOM Segmentation of a tiled image from a mask of any size.

    Blocks of whole tiles are encoded on the Dask cluster's workers and streamed to a temporary
    file beside ``path``, renamed into place when complete. Memory stays bounded by a few blocks,
    whatever the size of the mask.

    Parameters
    ----------
    mask : dask.array.Array, zarr.Array, str, os.PathLike or numpy.ndarray
        The segmentation of the source image's total pixel matrix: a label image
        ``(rows, columns)`` whose values are segment numbers (0 is background), or a stack
        ``(rows, columns, segments)`` of one plane per segment (0/1 for BINARY; floats in
        [0, 1], booleans, or integers up to ``max_fractional_value`` taken as stored values
        for FRACTIONAL). A leading axis of length 1 is accepted. A path or URL opens a Zarr
        array. Chunks of any shape: they are aligned to tiles here. For a series: labels
        ``(frames, rows, columns)`` or planes ``(frames, rows, columns, segments)``, frame k
        for source image k in the order given (as highdicom), or the path of a NIfTI file
        (``.nii``, ``.nii.gz``; extra ``nifti``), matched to the series by its affine.
    source_image : pydicom.Dataset, str, os.PathLike or a sequence of them
        The slide (or its header), or the path of its DICOM file (read without pixel data).
        The mask's shape must equal its TotalPixelMatrixRows x TotalPixelMatrixColumns. Or a
        series of single-frame images (CT, MR, PET...): Datasets, paths, or a folder holding
        one series, read without pixel data, in parallel.
    segment_descriptions : sequence of highdicom.seg.SegmentDescription
        One description per segment, numbered 1..n.
    path : str or os.PathLike
        The file to write. Its folder must exist.
    segmentation_type : {"BINARY", "FRACTIONAL", "LABELMAP"}
        As highdicom's ``segmentation_type``.
    transfer_syntax_uid : str
        Explicit or Implicit VR Little Endian (native), JPEG 2000 Lossless, JPEG-LS Lossless or
        RLE Lossless, as highdicom allows them for the type (see ``ALLOWED_TRANSFER_SYNTAXES``).
    tile_size : int or (int, int), optional
        Rows and columns of a frame; the source's Rows x Columns by default.
    dimension_organization_type : {"TILED_SPARSE", "TILED_FULL", "3D"}, optional
        TILED_FULL stores every frame in implicit order without per-frame functional groups;
        TILED_SPARSE by default for a tiled image. For a series: None (inferred as highdicom
        does) or "3D".
    omit_empty_frames : bool, optional
        Leave out frames without any non-zero pixel (TILED_SPARSE and series; the default
        there).
    max_fractional_value, fractional_type
        As highdicom, for FRACTIONAL.
    series_instance_uid, sop_instance_uid : str, optional
        New UIDs by default.
    series_number, instance_number, manufacturer, manufacturer_model_name, software_versions,
    device_serial_number, content_label, content_description, content_creator_name
        As highdicom; ``software_versions`` is daskseg's version by default.
    use_extended_offset_table : bool, optional
        Encapsulated syntaxes: ``None`` (default) writes a Basic Offset Table, or an Extended
        Offset Table when the frames pass 4 GiB.
    client : distributed.Client, optional
        The cluster to run on: by default the current client, else a LocalCluster started and
        closed by this call.
    overwrite : bool
        Replace an existing file at ``path``.
    progress : bool
        Show a progress bar of frames encoded (terminal or Jupyter) and the dashboard link.
    **highdicom_options
        Further header options passed to ``highdicom.seg.Segmentation`` (for example
        ``pixel_measures``, ``plane_positions``, ``pyramid_uid``, ``pyramid_label``,
        ``content_creator_identification``).

    Returns
    -------
    pathlib.Path
        The path written.

    Raises
    ------
    SegmentationInputError
        For inputs that cannot make a valid SEG, before any work is sent to the cluster, or
        (for values) from the block that holds them; nothing is left at ``path``.
    SegmentationTypeError
        For arguments of the wrong type.
    DestinationExistsError
        If ``path`` exists and ``overwrite`` is False.
    ClusterError
        If the cluster loses the work and cannot recover it.

    Examples
    --------
    >>> from daskseg.synthetic import make_slide, make_tissue_mask, make_segment_descriptions
    >>> source = make_slide(2048, 2048, tile_size=(256, 256))
    >>> mask = make_tissue_mask(2048, 2048, 3, chunks=512)
    >>> write_segmentation(mask, source, make_segment_descriptions(3), "seg.dcm",
    ...                    transfer_syntax_uid="1.2.840.10008.1.2.4.90")  # doctest: +SKIP
    """
    from daskseg import __version__

    destination = _check_destination(path, overwrite)
    numbers = _segment_numbers(segment_descriptions)
    segmentation_type = str(segmentation_type).upper()
    if segmentation_type not in ALLOWED_TRANSFER_SYNTAXES:
        raise SegmentationInputError(
            f"Unknown segmentation_type {segmentation_type!r}; use one of "
            f"{', '.join(ALLOWED_TRANSFER_SYNTAXES)}."
        )
    transfer_syntax_uid = UID(str(transfer_syntax_uid))
    allowed = ALLOWED_TRANSFER_SYNTAXES[segmentation_type]
    if transfer_syntax_uid not in allowed:
        lossy = " It is lossy: a SEG must be stored losslessly." if (
            transfer_syntax_uid.is_transfer_syntax and transfer_syntax_uid.is_compressed
            and not transfer_syntax_uid.info.endswith("Lossless")
            and "Lossless" not in transfer_syntax_uid.name
        ) else ""
        raise SegmentationInputError(
            f"Transfer syntax {transfer_syntax_uid} ({transfer_syntax_uid.name}) is not "
            f"allowed for a {segmentation_type} SEG.{lossy} Use one of: "
            + ", ".join(f"{uid} ({uid.name})" for uid in allowed)
        )
    if segmentation_type == "FRACTIONAL" and not 1 <= int(max_fractional_value) <= 255:
        raise SegmentationInputError(
            f"max_fractional_value must be in 1..255, got {max_fractional_value}."
        )
    hd_options: dict[str, Any] = dict(
        segmentation_type=segmentation_type,
        segment_descriptions=segment_descriptions,
        series_instance_uid=series_instance_uid or hd.UID(),
        series_number=series_number,
        sop_instance_uid=sop_instance_uid or hd.UID(),
        instance_number=instance_number,
        manufacturer=manufacturer,
        manufacturer_model_name=manufacturer_model_name,
        software_versions=software_versions or f"daskseg {__version__}",
        device_serial_number=device_serial_number,
        transfer_syntax_uid=transfer_syntax_uid,
        max_fractional_value=max_fractional_value,
        fractional_type=fractional_type,
        content_label=content_label,
        content_description=content_description,
        content_creator_name=content_creator_name,
        **highdicom_options,
    )
    if is_volume_source(source_image):
        from daskseg._volume import write_volume_segmentation  # it imports this module

        if tile_size is not None:
            raise SegmentationInputError(
                "tile_size is for tiled images; a SEG of a series has frames of its images' size."
            )

        return write_volume_segmentation(
            mask, source_image, segment_descriptions, destination,
            n_segments=len(numbers),
            segmentation_type=segmentation_type,
            transfer_syntax_uid=transfer_syntax_uid,
            dimension_organization_type=dimension_organization_type,
            omit_empty_frames=omit_empty_frames,
            max_fractional_value=max_fractional_value,
            use_extended_offset_table=use_extended_offset_table,
            hd_options=hd_options,
            client=client, overwrite=overwrite, progress=progress,
        )
    source = load_source_image(source_image)
    organization = str(dimension_organization_type or "TILED_SPARSE").upper()
    if organization not in ("TILED_SPARSE", "TILED_FULL"):
        raise SegmentationInputError(
            f"dimension_organization_type must be 'TILED_SPARSE' or 'TILED_FULL', "
            f"got {dimension_organization_type!r}."
        )
    tiled_full = organization == "TILED_FULL"
    if omit_empty_frames is None:
        omit_empty_frames = not tiled_full
    if tiled_full and omit_empty_frames:
        raise SegmentationInputError(
            "A TILED_FULL SEG holds every frame: omit_empty_frames must be False (or None)."
        )
    tile = _tile_size(tile_size, source)
    if transfer_syntax_uid == JPEG2000Lossless and min(tile) < 32:
        raise SegmentationInputError(
            f"JPEG 2000 cannot encode frames smaller than 32 x 32 pixels (tile_size {tile}); "
            "use a larger tile_size or a native transfer syntax."
        )

    geometry_given = any(
        key in highdicom_options for key in ("pixel_measures", "plane_positions", "plane_orientation")
    )
    expected = (int(source.TotalPixelMatrixRows), int(source.TotalPixelMatrixColumns))
    array, stacked = _normalize_mask(
        _as_dask_array(mask), len(numbers), None if geometry_given else expected
    )
    if not geometry_given and tuple(array.shape[:2]) != expected:
        raise SegmentationInputError(
            f"The mask has shape {tuple(array.shape[:2])} but the source's total pixel matrix "
            f"is {expected[0]} x {expected[1]}; the mask must cover it pixel for pixel."
        )
    grid = TileGrid(int(array.shape[0]), int(array.shape[1]), *tile)

    hd_options["dimension_organization_type"] = organization
    try:
        header = _proxy_header(source, stacked, array.dtype, len(numbers), tile, hd_options)
    except (ValueError, TypeError) as error:
        raise SegmentationInputError(f"highdicom refused the SEG's header: {error}") from error
    header.TotalPixelMatrixRows, header.TotalPixelMatrixColumns = grid.rows, grid.columns

    spec = FrameSpec(
        segmentation_type=segmentation_type,
        n_segments=len(numbers),
        stacked=stacked,
        tile_rows=tile[0],
        tile_columns=tile[1],
        transfer_syntax_uid=str(transfer_syntax_uid),
        bits_allocated=int(header.BitsAllocated),
        max_fractional_value=int(max_fractional_value),
        omit_empty_frames=bool(omit_empty_frames),
    )
    if spec.is_native:
        n_frames = spec.n_channels * grid.n_tiles
        native_bytes = -(-spec.bits_allocated * grid.pixels_per_frame * n_frames // 8)
        if native_bytes > _MAX_NATIVE_BYTES:
            raise SegmentationInputError(
                f"Native pixel data of {native_bytes / 2**30:.1f} GiB does not fit a DICOM "
                "element (4 GiB at most); use an encapsulated transfer syntax such as "
                f"JPEG 2000 Lossless ({JPEG2000Lossless})."
            )

    # Blocks near the mask's own chunks keep rechunking cheap; an in-memory mask has none.
    hint = (2048, 2048) if isinstance(mask, np.ndarray) else (array.chunks[0][0], array.chunks[1][0])
    chunk_rows = aligned_chunks(grid.rows, tile[0], hint[0])
    chunk_columns = aligned_chunks(grid.columns, tile[1], hint[1])
    if isinstance(mask, np.ndarray):
        aligned = _numpy_blocks(np.asarray(mask).reshape(array.shape), chunk_rows, chunk_columns)
    else:
        aligned = array.rechunk((chunk_rows, chunk_columns, *array.shape[2:]))
    tasks = _block_tasks(aligned, spec)

    shape = (spec.n_channels, grid.n_tile_rows, grid.n_tile_columns)
    spool = _Spool(destination.parent, destination.name, shape)
    tile_nonempty = np.zeros(shape[1:], dtype=bool)
    temporary: pathlib.Path | None = None
    try:
        with cluster_client(client) as dask_client:
            with progress_bar(
                spec.n_channels * grid.n_tiles, "encoding frames", enabled=progress,
                client=dask_client,
            ) as bar:
                overlap = _encode_blocks(dask_client, tasks, spool, tile_nonempty, bar)
        if header.get("SegmentsOverlap") != "UNDEFINED":
            header.SegmentsOverlap = "YES" if overlap else "NO"
        temporary = _write_file(destination, header, spool, spec, grid, tiled_full,
                                tile_nonempty, highdicom_options, use_extended_offset_table)
        if not overwrite and destination.exists():
            raise DestinationExistsError(
                f"{destination} appeared while writing; pass overwrite=True to replace it."
            )
        os.replace(temporary, destination)
        temporary = None
    finally:
        spool.close()
        if temporary is not None:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(temporary)
    return destination
