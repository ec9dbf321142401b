"""Damaged and hostile variants of real SEG files, for the reader's robustness tests.

Each variant is made from the bytes of a real SEG and the positions of its parts, found by
parsing the file with pydicom (element and item offsets, the offset tables, the fragments).
A variant says what it damaged: whether the header that opening a SEG reads is unusable
(``at_open``), and which frames' bytes are touched (reading them must fail; reading the others
may still return the right values).
"""

from __future__ import annotations

import contextlib
import io
import pathlib
import resource
import struct
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import dask
import numpy as np
import pydicom
from pydicom.dataset import Dataset
from pydicom.encaps import encapsulate, encapsulate_extended, parse_basic_offsets, parse_fragments
from pydicom.uid import (
    ExplicitVRLittleEndian,
    JPEG2000Lossless,
    JPEGLSLossless,
    RLELossless,
)

from daskseg import read_segmentation, write_segmentation
from daskseg.synthetic import make_segment_descriptions, make_slide, make_tissue_mask

# Small SEGs: 64 x 96 pixels in 32 x 32 tiles (a 2 x 3 grid), three segments. Each type and
# organization, each type native and encapsulated.
ROWS, COLUMNS, TILE = 64, 96, 32
SOURCES = {
    "binary-native-full": ("BINARY", ExplicitVRLittleEndian, "TILED_FULL"),
    "binary-j2k-sparse": ("BINARY", JPEG2000Lossless, "TILED_SPARSE"),
    "fractional-rle-full": ("FRACTIONAL", RLELossless, "TILED_FULL"),
    "fractional-native-sparse": ("FRACTIONAL", ExplicitVRLittleEndian, "TILED_SPARSE"),
    "labelmap-jpegls-sparse": ("LABELMAP", JPEGLSLossless, "TILED_SPARSE"),
    "labelmap-native-full": ("LABELMAP", ExplicitVRLittleEndian, "TILED_FULL"),
}
# SEGs of tiled images from other software in /work/shared/testdata (all native).
SHARED_SEGS = [
    "seg_image_sm_control.dcm",
    "seg_image_sm_control_labelmap.dcm",
    "seg_image_sm_dots.dcm",
    "seg_image_sm_dots_tiled_full.dcm",
]


def write_source(folder: pathlib.Path, name: str, client) -> pathlib.Path:
    """Write the small SEG ``name`` of :data:`SOURCES` with daskseg's writer."""
    segmentation_type, transfer_syntax, organization = SOURCES[name]
    stacked = segmentation_type == "FRACTIONAL"
    mask = make_tissue_mask(ROWS, COLUMNS, 3, chunks=(TILE, 2 * TILE), stacked=stacked)
    if stacked:
        fractions = np.linspace(0.2, 1.0, COLUMNS, dtype=np.float32)[None, :, None]
        mask = (mask * fractions).astype(np.float32)
    return write_segmentation(
        mask, make_slide(ROWS, COLUMNS, tile_size=(TILE, TILE)),
        make_segment_descriptions(3, segmentation_type=segmentation_type), folder / f"{name}.dcm",
        segmentation_type=segmentation_type, transfer_syntax_uid=transfer_syntax,
        dimension_organization_type=organization, client=client,
    )


def read_all(path, **kwargs) -> np.ndarray:
    """The whole total pixel matrix, read by daskseg on the synchronous scheduler."""
    with dask.config.set(scheduler="synchronous"):
        return read_segmentation(path, **kwargs).compute()


# --------------------------------------------------------------------------- layout


@dataclass
class Layout:
    """Where the parts of a SEG file are (byte offsets into ``data``)."""

    data: bytes = field(repr=False)
    header: Dataset = field(repr=False)  # everything before Pixel Data
    per_frame_items: list[int]  # each item's tag in PerFrameFunctionalGroupsSequence
    pixel_element: int  # the Pixel Data element's tag
    pixel_value: int  # its first value byte (encapsulated: the Basic Offset Table's item tag)
    pixel_length: int  # native: the value length
    bot_entries: list[int] = field(default_factory=list)  # Basic Offset Table, as stored
    fragments: list[tuple[int, int]] = field(default_factory=list)  # (value start, length)
    frame_ranges: list[tuple[int, int]] = field(default_factory=list)  # each frame's bytes

    @property
    def encapsulated(self) -> bool:
        return self.header.file_meta.TransferSyntaxUID.is_encapsulated

    @property
    def n_frames(self) -> int:
        return int(self.header.get("NumberOfFrames", 1))

    def frame_tiles(self) -> list[tuple[int, int]]:
        """The (tile row, tile column) of each frame, 0-based."""
        header = self.header
        rows, columns = int(header.Rows), int(header.Columns)
        n_columns = -(-int(header.TotalPixelMatrixColumns) // columns)
        n_rows = -(-int(header.TotalPixelMatrixRows) // rows)
        if header.get("DimensionOrganizationType") == "TILED_FULL":
            # PS3.3 C.7.6.17.3: segment slowest, then tile row, then tile column.
            return [divmod(i % (n_rows * n_columns), n_columns) for i in range(self.n_frames)]
        tiles = []
        for item in header.PerFrameFunctionalGroupsSequence:
            position = item.PlanePositionSlideSequence[0]
            tiles.append((
                (int(position.RowPositionInTotalImagePixelMatrix) - 1) // rows,
                (int(position.ColumnPositionInTotalImagePixelMatrix) - 1) // columns,
            ))
        return tiles

    def region_without(self, frames: set[int]) -> tuple[slice, slice] | None:
        """The pixels of a tile none of whose frames is in ``frames``, if there is one."""
        tiles = self.frame_tiles()
        damaged = {tiles[i] for i in frames if i < len(tiles)}
        rows, columns = int(self.header.Rows), int(self.header.Columns)
        n_rows = -(-int(self.header.TotalPixelMatrixRows) // rows)
        n_columns = -(-int(self.header.TotalPixelMatrixColumns) // columns)
        for r in range(n_rows):
            for c in range(n_columns):
                if (r, c) not in damaged:
                    return slice(r * rows, (r + 1) * rows), slice(c * columns, (c + 1) * columns)
        return None


def layout(data: bytes) -> Layout:
    """Parse ``data`` (a SEG file) with pydicom and say where its parts are."""
    handle = io.BytesIO(data)
    header = pydicom.dcmread(handle, stop_before_pixels=True)
    pixel_element = handle.tell()  # dcmread stops at the Pixel Data element's tag
    items = []
    if "PerFrameFunctionalGroupsSequence" in header:
        items = [item.seq_item_tell for item in header.PerFrameFunctionalGroupsSequence]
    syntax = header.file_meta.TransferSyntaxUID
    header_size = 8 if syntax.is_implicit_VR else 12
    handle.seek(pixel_element + header_size - 4)
    (length,) = struct.unpack("<I", handle.read(4))
    result = Layout(data, header, items, pixel_element, pixel_element + header_size, length)
    n_frames = result.n_frames
    if not syntax.is_encapsulated:
        rows, columns, bits = int(header.Rows), int(header.Columns), int(header.BitsAllocated)
        pixels = rows * columns
        for i in range(n_frames):  # PS3.5 8.1.1: 1-bit frames are packed without padding
            first, last = i * pixels * bits, (i + 1) * pixels * bits
            result.frame_ranges.append(
                (result.pixel_value + first // 8, result.pixel_value + -(-last // 8))
            )
        return result
    handle.seek(result.pixel_value)
    result.bot_entries = parse_basic_offsets(handle)
    first_fragment = handle.tell()
    _, item_tells = parse_fragments(handle)
    for tell in item_tells:
        (n,) = struct.unpack("<I", data[tell + 4 : tell + 8])
        result.fragments.append((tell + 8, n))
    if "ExtendedOffsetTable" in header:
        offsets = np.frombuffer(header.ExtendedOffsetTable, "<u8")
        lengths = np.frombuffer(header.ExtendedOffsetTableLengths, "<u8")
        result.frame_ranges = [
            (first_fragment + int(o) + 8, first_fragment + int(o) + 8 + int(n))
            for o, n in zip(offsets, lengths)
        ]
    elif result.bot_entries:
        # A frame runs from its first fragment to the next frame's first fragment.
        starts = {tell - first_fragment: k for k, tell in enumerate(item_tells)}
        bounds = [starts[o] for o in result.bot_entries] + [len(item_tells)]
        for i in range(len(result.bot_entries)):
            first, last = result.fragments[bounds[i]], result.fragments[bounds[i + 1] - 1]
            result.frame_ranges.append((first[0], last[0] + last[1]))
    else:
        result.frame_ranges = [(start, start + n) for start, n in result.fragments]
    return result


# --------------------------------------------------------------------------- variants


@dataclass(frozen=True)
class Damaged:
    """A damaged copy of a SEG and what the damage touches."""

    data: bytes
    # Opening must refuse it: the header, the frame index or the declared sizes are unusable.
    at_open: bool
    # Frames whose bytes are damaged or missing: reading any of them must fail. Empty for a
    # valid file laid out unusually (its values must read right).
    frames: frozenset[int] = frozenset()


def _all(source: Layout) -> frozenset[int]:
    return frozenset(range(source.n_frames))


def _resave(source: Layout, edit: Callable[[Dataset], None]) -> bytes:
    """Read the whole file with pydicom, ``edit`` the dataset, and write it again."""
    dataset = pydicom.dcmread(io.BytesIO(source.data))
    edit(dataset)
    out = io.BytesIO()
    dataset.save_as(out, enforce_file_format=True)
    return out.getvalue()


def _frames_of(source: Layout) -> list[bytes]:
    return [source.data[start:stop] for start, stop in source.frame_ranges]


def reencapsulate(source: Layout, layout_name: str) -> bytes | None:
    """The same frames encapsulated anew: "bot", "no bot", "eot", "split bot", "split no bot",
    "first split bot", "first split no bot" (split: each / the first frame in two fragments)."""
    if not source.encapsulated:
        return None
    frames = _frames_of(source)

    def edit(dataset: Dataset) -> None:
        for keyword in ("ExtendedOffsetTable", "ExtendedOffsetTableLengths"):
            if keyword in dataset:
                del dataset[keyword]
        if layout_name == "eot":
            dataset.PixelData, dataset.ExtendedOffsetTable, dataset.ExtendedOffsetTableLengths = (
                encapsulate_extended(frames)
            )
        elif layout_name.startswith("first split"):
            # PS3.5 A.4: a frame may span fragments; then only an offset table finds frames.
            half = len(frames[0]) // 2 // 2 * 2  # fragments have even length (PS3.5 A.4)
            has_bot = not layout_name.endswith("no bot")
            fragments = [frames[0][:half], frames[0][half:], *frames[1:]]
            items = b"".join(
                struct.pack("<HHI", 0xFFFE, 0xE000, len(f) + len(f) % 2) + f + b"\0" * (len(f) % 2)
                for f in fragments
            )
            offsets = []
            if has_bot:
                sizes = [8 + len(f) + len(f) % 2 for f in fragments]
                position = sizes[0] + sizes[1]
                offsets = [0]
                for size in sizes[2:]:
                    offsets.append(position)
                    position += size
            bot = b"".join(struct.pack("<I", o) for o in offsets)
            dataset.PixelData = struct.pack("<HHI", 0xFFFE, 0xE000, len(bot)) + bot + items
        else:
            dataset.PixelData = encapsulate(
                frames, fragments_per_frame=2 if layout_name.startswith("split") else 1,
                has_bot=not layout_name.endswith("no bot"),
            )
        dataset["PixelData"].is_undefined_length = True

    return _resave(source, edit)


def _patch(data: bytes, offset: int, new: bytes) -> bytes:
    return data[:offset] + new + data[offset + len(new) :]


def _with_bot(source: Layout, change: Callable[[list[int]], list[int]]) -> bytes | None:
    """The file with its Basic Offset Table entries changed in place."""
    if not source.encapsulated or not source.bot_entries:
        return None
    entries = [int(e) for e in change(list(source.bot_entries))]
    return _patch(source.data, source.pixel_value + 8, struct.pack(f"<{len(entries)}I", *entries))


def _with_eot(source: Layout, change: Callable[[np.ndarray, np.ndarray], None]) -> bytes | None:
    """A copy whose frames are in an Extended Offset Table, with its entries changed."""
    eot = reencapsulate(source, "eot")
    if eot is None:
        return None

    def edit(dataset: Dataset) -> None:
        offsets = np.frombuffer(dataset.ExtendedOffsetTable, "<u8").copy()
        lengths = np.frombuffer(dataset.ExtendedOffsetTableLengths, "<u8").copy()
        change(offsets, lengths)
        dataset.ExtendedOffsetTable = offsets.tobytes()
        dataset.ExtendedOffsetTableLengths = lengths.tobytes()

    return _resave(layout(eot), edit)


def _set(**values) -> Callable[[Dataset], None]:
    def edit(dataset: Dataset) -> None:
        for keyword, value in values.items():
            setattr(dataset, keyword, value)

    return edit


def _replace_uid(source: Layout, new: str) -> bytes | None:
    """The file with another Transfer Syntax UID of the same length, patched in place."""
    old = str(source.header.file_meta.TransferSyntaxUID)
    if len(new) != len(old):
        return None
    padded = old.encode() + b"\0" * (len(old) % 2)
    at = source.data.find(padded, 0, source.data.find(b"DICM") + 512)
    if at < 0:
        return None
    return _patch(source.data, at, new.encode() + b"\0" * (len(new) % 2))


def _unknown_uid(source: Layout) -> str:
    """A UID of the same length as the file's transfer syntax that names no transfer syntax."""
    old = str(source.header.file_meta.TransferSyntaxUID)
    prefix = "1.2.840.10008."
    return prefix + "".join("." if ch == "." else "9" for ch in old[len(prefix) :])


def _cut(source: Layout, offset: int, frames: frozenset[int], at_open: bool) -> Damaged:
    return Damaged(source.data[:offset], at_open, frames)


def _garbage(length: int) -> bytes:
    return (b"\xde\xad\xbe\xef" * (length // 4 + 1))[:length]


# Each case: Layout -> Damaged, or None where it does not apply to that file.
CASES: dict[str, Callable[[Layout], Damaged | None]] = {}


def case(name: str):
    def register(function):
        CASES[name] = function
        return function

    return register


@case("cut in file meta")
def _(s):
    return _cut(s, 200, _all(s), True)


@case("cut in header")
def _(s):
    end = s.per_frame_items[0] if s.per_frame_items else s.pixel_element
    return _cut(s, end // 2, _all(s), True)


@case("cut in per-frame items")
def _(s):
    if len(s.per_frame_items) < 2:
        return None
    return _cut(s, s.per_frame_items[len(s.per_frame_items) // 2] + 10, _all(s), True)


@case("cut in pixel data element header")
def _(s):
    return _cut(s, s.pixel_element + 6, _all(s), True)


@case("cut in offset table")
def _(s):
    if not s.bot_entries:
        return None
    return _cut(s, s.pixel_value + 8 + 2 * len(s.bot_entries), _all(s), False)


@case("cut in first frame")
def _(s):
    start, stop = s.frame_ranges[0]
    return _cut(s, (start + stop) // 2, _all(s), False)


@case("cut in last frame")
def _(s):
    start, stop = s.frame_ranges[-1]
    return _cut(s, (start + stop) // 2, frozenset({s.n_frames - 1}), False)


@case("cut in middle frame")
def _(s):
    k = s.n_frames // 2
    start, stop = s.frame_ranges[k]
    return _cut(s, (start + stop) // 2, frozenset(range(k, s.n_frames)), False)


@case("BOT entry beyond pixel data")
def _(s):
    k = s.n_frames // 2

    def change(entries):
        entries[k] = len(s.data) * 4
        return entries

    data = _with_bot(s, change)
    return data and Damaged(data, False, frozenset({k - 1, k}))


@case("BOT entry not at a fragment")
def _(s):
    k = s.n_frames // 2

    def change(entries):
        entries[k] += 2
        return entries

    data = _with_bot(s, change)
    return data and Damaged(data, False, frozenset({k - 1, k}))


@case("BOT entries out of order")
def _(s):
    k = s.n_frames // 2

    def change(entries):
        entries[k], entries[k + 1] = entries[k + 1], entries[k]
        return entries

    data = _with_bot(s, change)
    return data and Damaged(data, False, frozenset({k - 1, k, k + 1}))


@case("EOT entry beyond pixel data")
def _(s):
    k = s.n_frames // 2

    def change(offsets, lengths):
        offsets[k] = len(s.data) * 4

    data = _with_eot(s, change)
    return data and Damaged(data, False, frozenset({k}))


@case("EOT entries out of order")
def _(s):
    k = s.n_frames // 2

    def change(offsets, lengths):
        offsets[[k, k + 1]] = offsets[[k + 1, k]]
        lengths[[k, k + 1]] = lengths[[k + 1, k]]

    data = _with_eot(s, change)
    return data and Damaged(data, False, frozenset({k, k + 1}))


@case("EOT length beyond its fragment")
def _(s):
    k = s.n_frames // 2

    def change(offsets, lengths):
        lengths[k] += 1000

    data = _with_eot(s, change)
    return data and Damaged(data, False, frozenset({k}))


@case("frames split in two fragments, BOT")
def _(s):
    data = reencapsulate(s, "split bot")
    return data and Damaged(data, False)


@case("first frame in two fragments, BOT")
def _(s):
    data = reencapsulate(s, "first split bot")
    return data and Damaged(data, False)


@case("frames in extended offset table")
def _(s):
    data = reencapsulate(s, "eot")
    return data and Damaged(data, False)


@case("frames split in two fragments, no offset table")
def _(s):
    data = reencapsulate(s, "split no bot")
    return data and Damaged(data, True, _all(s))


@case("first frame in two fragments, no offset table")
def _(s):
    data = reencapsulate(s, "first split no bot")
    return data and Damaged(data, True, _all(s))


@case("two frames in one fragment")
def _(s):
    if not s.encapsulated:
        return None
    frames = _frames_of(s)
    merged = [frames[0] + frames[1], *frames[2:]]

    def edit(dataset):
        dataset.PixelData = encapsulate(merged, has_bot=False)
        dataset["PixelData"].is_undefined_length = True

    return Damaged(_resave(s, edit), True, _all(s))


@case("NumberOfFrames one more")
def _(s):
    return Damaged(_resave(s, _set(NumberOfFrames=s.n_frames + 1)), True, _all(s))


@case("NumberOfFrames one fewer")
def _(s):
    return Damaged(_resave(s, _set(NumberOfFrames=s.n_frames - 1)), True, _all(s))


@case("NumberOfFrames huge")
def _(s):
    return Damaged(_resave(s, _set(NumberOfFrames=2**31 - 1)), True, _all(s))


@case("Rows and Columns huge")
def _(s):
    return Damaged(_resave(s, _set(Rows=65535, Columns=65535)), False, _all(s))


@case("total pixel matrix huge")
def _(s):
    huge = _set(TotalPixelMatrixRows=2**31, TotalPixelMatrixColumns=2**31)
    return Damaged(_resave(s, huge), True, _all(s))


@case("total pixel matrix rows huge")
def _(s):
    return Damaged(_resave(s, _set(TotalPixelMatrixRows=2**31)), True, _all(s))


@case("native pixel data short")
def _(s):
    if s.encapsulated:
        return None
    keep = s.pixel_length // 2 - s.pixel_length // 2 % 2

    def edit(dataset):
        dataset.PixelData = dataset.PixelData[:keep]

    frames = frozenset(i for i, (start, stop) in enumerate(s.frame_ranges)
                       if stop - s.pixel_value > keep)
    return Damaged(_resave(s, edit), False, frames)


@case("garbage in a fragment")
def _(s):
    if not s.encapsulated:
        return None
    k = s.n_frames // 2
    start, stop = s.frame_ranges[k]
    return Damaged(_patch(s.data, start, _garbage(stop - start)), False, frozenset({k}))


@case("garbage fragment item tag")
def _(s):
    if not s.encapsulated:
        return None
    k = s.n_frames // 2
    start, _stop = s.frame_ranges[k]
    return Damaged(_patch(s.data, start - 8, _garbage(8)), False, frozenset(range(k, s.n_frames)))


@case("unknown transfer syntax")
def _(s):
    data = _replace_uid(s, _unknown_uid(s))
    return data and Damaged(data, True, _all(s))


@case("unsupported transfer syntax")
def _(s):
    # JPEG Baseline for an encapsulated file; Explicit VR Big Endian for a native one (same
    # lengths as the UIDs they replace, so the file meta stays intact).
    uid = "1.2.840.10008.1.2.4.50" if s.encapsulated else "1.2.840.10008.1.2.2"
    data = _replace_uid(s, uid)
    return data and Damaged(data, True, _all(s))


@case("BitsAllocated 32")
def _(s):
    # Frames were taken as 8-bit: a 16-bit LABELMAP read wrapped at 256, silently.
    return Damaged(_resave(s, _set(BitsAllocated=32)), True, _all(s))


@case("last fragment longer than the file")
def _(s):
    # A length field of nearly 4 GiB: the read allocated it (MemoryError under a bound).
    if not s.encapsulated:
        return None
    start, _stop = s.frame_ranges[-1]
    data = _patch(s.data, start - 4, (0xFFFFFFF0).to_bytes(4, "little"))
    return Damaged(data, False, frozenset({s.n_frames - 1}))


@case("label no segment describes")
def _(s):
    # A native 8-bit LABELMAP's pixel set to 200 (segments 1..3): read as background, silently.
    if (s.encapsulated or s.header.SegmentationType != "LABELMAP"
            or int(s.header.BitsAllocated) != 8):
        return None
    start, _stop = s.frame_ranges[0]
    return Damaged(_patch(s.data, start, bytes([200])), False, frozenset({0}))


# Files that are not a SEG of a tiled image at all: name -> bytes (or a testdata file name).
NOT_A_SEG = {
    "empty file": b"",
    "text": b"this is not a DICOM file\n" * 40,
    "preamble only": b"\0" * 128 + b"DICM",
    "preamble and garbage": b"\0" * 128 + b"DICM" + _garbage(4000),
    "CT image": "ct_image.dcm",
    "slide image": "sm_image.dcm",
}
# A SEG of a series (seg_image_ct_binary.dcm) is read by the volume reader (test_volume_read).


# --------------------------------------------------------------------------- limits


@contextlib.contextmanager
def bounded_memory(extra: int = 2 * 2**30) -> Iterator[None]:
    """Let this process map at most ``extra`` more bytes while inside (RLIMIT_AS).

    A reader that allocates from a hostile size then gets a MemoryError instead of taking the
    machine's memory (and the test reports it), rather than being killed.
    """
    import psutil

    soft, hard = resource.getrlimit(resource.RLIMIT_AS)
    limit = psutil.Process().memory_info().vms + extra
    if hard != resource.RLIM_INFINITY:
        limit = min(limit, hard)
    resource.setrlimit(resource.RLIMIT_AS, (limit, hard))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_AS, (soft, hard))
