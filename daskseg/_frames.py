"""The frame index of a SEG file: where each frame's bytes are, and which tile it holds.

The header is read once, without the pixel data. Each frame's bytes are located from the Basic
or Extended Offset Table, or by walking the fragment items' headers when there is neither
(PS3.5 A.4), and recorded as byte ranges; :class:`FileSource` reads those ranges on the workers.
A frame's bytes from elsewhere (WADO-RS, say) would be another source with the same ``open``.
"""

from __future__ import annotations

import struct
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import BinaryIO

import numpy as np
from pydicom.dataset import Dataset
from pydicom.encaps import parse_basic_offsets, parse_fragments
from pydicom.uid import UID

from daskseg._codecs import codec_for, frame_dtype
from daskseg.errors import SegmentationInputError
from daskseg.plan import TileGrid

__all__ = ["FileSource", "FrameLayout", "FrameRanges", "index_frames", "locate_frames", "open_file"]

#: The byte ranges ``(offset, length)`` that hold one frame's bytes, in order.
FrameRanges = list[tuple[int, int]]


def open_file(path: str) -> BinaryIO:
    """A binary file object for a local path or an fsspec URL."""
    if "://" in path and not path.startswith("file://"):
        import fsspec  # optional: only for URLs

        return fsspec.open(path, "rb").open()
    return open(path.removeprefix("file://"), "rb")


@dataclass(frozen=True)
class FileSource:
    """Frames read by positioned reads of a local file or fsspec URL (small, picklable)."""

    path: str

    @contextmanager
    def open(self) -> Iterator[FrameReader]:
        with open_file(self.path) as handle:
            yield FrameReader(handle)


class FrameReader:
    """An open source: the bytes of a frame from its byte ranges."""

    def __init__(self, handle: BinaryIO) -> None:
        self._handle = handle

    def read(self, ranges: Sequence[tuple[int, int]]) -> bytes:
        parts = []
        for offset, length in ranges:
            self._handle.seek(offset)
            parts.append(self._handle.read(length))
        return b"".join(parts)


@dataclass(frozen=True)
class FrameLayout:
    """How a frame's bytes become an array (sent to every decode task)."""

    transfer_syntax_uid: str
    rows: int
    columns: int
    bits_allocated: int
    pixel_offset: int  # native: file offset of the first pixel byte

    @property
    def dtype(self) -> np.dtype:
        return frame_dtype(self.bits_allocated)

    @property
    def native(self) -> bool:
        return not UID(self.transfer_syntax_uid).is_encapsulated

    def ranges(self, index: int) -> FrameRanges:
        """Native frames: the byte range holding frame ``index`` (0-based)."""
        pixels = self.rows * self.columns
        if self.bits_allocated == 1:
            first, last = index * pixels, (index + 1) * pixels
            return [(self.pixel_offset + first // 8, -(-last // 8) - first // 8)]
        size = pixels * self.bits_allocated // 8
        return [(self.pixel_offset + index * size, size)]


def locate_frames(
    handle: BinaryIO, header: Dataset, start: int, tiled: bool = True
) -> tuple[FrameLayout, list[FrameRanges] | None]:
    """The layout of the Pixel Data at ``start``, and each frame's byte ranges when encapsulated.

    ``tiled``: refuse a SEG that is not of a tiled image (the volume reader passes False).
    """
    if "SegmentSequence" not in header:
        raise SegmentationInputError(
            f"{handle.name if hasattr(handle, 'name') else 'The file'} is not a DICOM "
            "Segmentation (no SegmentSequence)."
        )
    if tiled and "TotalPixelMatrixRows" not in header:
        raise SegmentationInputError(
            "The SEG is not of a tiled image (no TotalPixelMatrixRows); read it with "
            "highdicom.seg.segread instead."
        )
    syntax = header.file_meta.TransferSyntaxUID
    if syntax.is_encapsulated and codec_for(syntax) is None:
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
    layout = FrameLayout(
        transfer_syntax_uid=str(syntax),
        rows=int(header.Rows),
        columns=int(header.Columns),
        bits_allocated=int(header.BitsAllocated),
        pixel_offset=value_start,
    )
    if not syntax.is_encapsulated:
        return layout, None

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
        return layout, [
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
        return layout, [fragments[bounds[i] : bounds[i + 1]] for i in range(len(bot))]
    if len(fragments) == n_frames:
        return layout, [[fragment] for fragment in fragments]
    if n_frames == 1:
        return layout, [fragments]
    raise SegmentationInputError(
        f"{len(fragments)} fragments for {n_frames} frames and no offset table: frames "
        "split over several fragments need a Basic or Extended Offset Table."
    )



def index_frames(header: Dataset, segment_numbers: list[int], grid: TileGrid) -> np.ndarray:
    """Frame index (0-based, -1 if absent) of each (channel, tile row, tile column)."""
    labelmap = header.SegmentationType == "LABELMAP"
    n_channels = 1 if labelmap else len(segment_numbers)
    grid_shape = (grid.n_tile_rows, grid.n_tile_columns)
    number_of_frames = int(header.get("NumberOfFrames", 1))
    table = np.full((n_channels, *grid_shape), -1, dtype=np.int64)
    if header.get("DimensionOrganizationType") == "TILED_FULL":
        # PS3.3 C.7.6.17.3: implicit order, segment slowest, then tile row, then column.
        if number_of_frames != table.size:
            raise SegmentationInputError(
                f"A TILED_FULL SEG of {n_channels} x {grid_shape[0]} x "
                f"{grid_shape[1]} frames (channels x tile rows x tile columns) says it "
                f"has {number_of_frames}: the header is inconsistent."
            )
        table.reshape(-1)[:] = np.arange(table.size)
        return table
    shared = header.SharedFunctionalGroupsSequence[0]
    shared_segment = None
    if "SegmentIdentificationSequence" in shared:
        shared_segment = int(shared.SegmentIdentificationSequence[0].ReferencedSegmentNumber)
    channel_of = {number: k for k, number in enumerate(segment_numbers)}
    tile_rows, tile_columns = grid.tile_rows, grid.tile_columns
    for index, item in enumerate(header.PerFrameFunctionalGroupsSequence):
        position = item.PlanePositionSlideSequence[0]
        row, row_offset = divmod(int(position.RowPositionInTotalImagePixelMatrix) - 1,
                                 tile_rows)
        column, column_offset = divmod(
            int(position.ColumnPositionInTotalImagePixelMatrix) - 1, tile_columns
        )
        if row_offset or column_offset or not (
            0 <= row < grid_shape[0] and 0 <= column < grid_shape[1]
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
