"""The frame index of a SEG file: where each frame's bytes are, and which tile it holds.

The header is read once, without the pixel data. Each frame's bytes are located from the Basic
or Extended Offset Table, or by walking the fragment items' headers when there is neither
(PS3.5 A.4), and recorded as byte ranges; :class:`FileSource` reads those ranges on the workers.
A source is anything with ``open()`` giving a reader whose ``frames(layout, refs)`` yields each
frame's bytes (:class:`FrameSource`); ``daskseg._web.WebSource`` fetches them with WADO-RS.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import io
import os
import struct
from collections.abc import Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass
from typing import Any, BinaryIO, Protocol

import numpy as np
import pydicom.errors
from pydicom.dataset import Dataset
from pydicom.uid import UID

from daskseg._codecs import CODECS, codec_for, frame_dtype
from daskseg.errors import MissingDependencyError, SegmentationFileError, SegmentationInputError
from daskseg.plan import TileGrid

__all__ = [
    "HEADER_DAMAGE", "MAX_FRAME_PIXELS", "MAX_INDEX_ENTRIES", "MAX_TILES", "SEG_SOP_CLASSES",
    "FileIdentity", "FileSource",
    "FrameLayout", "FrameRanges", "FrameSource", "check_header", "check_segmentation",
    "damaged_header", "describe_segments", "file_identity", "header_int", "index_frames",
    "invalid_dicom_reason",
    "local_path", "locate_frames", "open_file", "segment_items",
]

#: The byte ranges ``(offset, length)`` that hold one frame's bytes, in order.
FrameRanges = list[tuple[int, int]]

#: A frame's 0-based index in the SEG and the byte ranges that hold it (empty when the source
#: finds frames by number, as WADO-RS does).
FrameRef = tuple[int, FrameRanges]


class OpenFrames(Protocol):
    """An open source of frames."""

    def frames(
        self, layout: FrameLayout, refs: Sequence[FrameRef]
    ) -> Iterator[tuple[FrameLayout, bytes]]:
        """Each frame's bytes, in the order of ``refs``, with the layout to decode them by."""
        ...


class FrameSource(Protocol):
    """Where a task gets its frames: small and picklable, opened on the worker."""

    def open(self) -> AbstractContextManager[OpenFrames]: ...


def local_path(path: str) -> str | None:
    """``path`` as an absolute local path (a ``file://`` URL's too), as processes started in
    another folder find it; None for another URL (fsspec's)."""
    if "://" in path and not path.startswith("file://"):
        return None
    return os.path.abspath(path.removeprefix("file://"))


def open_file(path: str) -> BinaryIO:
    """A binary file object for a local path or an fsspec URL."""
    if local_path(path) is None:
        import fsspec  # optional: only for URLs

        try:
            return fsspec.open(path, "rb").open()
        except FileNotFoundError:
            raise  # the callers name the file
        except ImportError as error:  # fsspec's "Please install gcsfs to access ..."
            raise MissingDependencyError(f"Reading {path} needs a package that is not "
                                         f"installed: {error}") from error
        except Exception as error:
            scheme = path.split("://", 1)[0]
            if isinstance(error, ValueError) and "Protocol not known" in str(error):
                raise SegmentationInputError(
                    f"{path}: no file system is known for URLs of scheme {scheme!r}. A DICOMweb "
                    "URL starts with http:// or https://; fsspec opens other URLs (s3://, "
                    "gs://, ...) when their package is installed."
                ) from error
            # The file system's own failures: credentials, permissions, a bucket's name.
            raise SegmentationInputError(
                f"{path} cannot be opened ({type(error).__name__}: "
                f"{' '.join(str(error).split())[:200]}): check the URL, and the credentials "
                f"of its file system ({scheme}://)."
            ) from error
    handle = open(path.removeprefix("file://"), "rb")
    if not handle.seekable():
        handle.close()
        # Frames are read where they lie in the file, and the header more than once.
        raise SegmentationInputError(
            f"{path} cannot be read in place (a pipe or a stream?): daskseg reads a SEG's "
            "frames where they lie in its file. Save it to a file, and give that."
        )
    return handle


def invalid_dicom_reason(error: Exception) -> str:
    """pydicom's reason for refusing a file as DICOM, without its advice to pass force=True
    (an argument of its own that daskseg's callers do not have)."""
    return str(error).replace(" Use force=True to force reading.", "").strip()


#: What tells a local file from another that replaced it at its path: its size, and a digest
#: of its first bytes, which hold its file meta (PS3.10 7.1: the SOP Instance UID, new in each
#: SEG written) and the start of its header. Not the device, inode or modification time: on
#: other machines, a shared file system's file has another device (and, on some mounts, other
#: inodes or times).
FileIdentity = tuple[int, bytes]
_IDENTITY_BYTES = 2**16


def file_identity(handle: BinaryIO) -> FileIdentity | None:
    """The identity of an open local file (its position kept); None for a file object of
    fsspec's, where it would cost a request of its own in every task."""
    if not isinstance(handle, io.BufferedReader | io.FileIO):
        return None
    position = handle.tell()
    handle.seek(0)
    start = handle.read(_IDENTITY_BYTES)
    size = handle.seek(0, 2)
    handle.seek(position)
    return size, hashlib.blake2b(start, digest_size=16).digest()


@dataclass(frozen=True)
class FileSource:
    """Frames read by positioned reads of a local file or fsspec URL (small, picklable).

    ``identity`` is that of the local file whose header gave the frames' byte ranges: a task
    that finds another file at the path (as a write with ``overwrite=True`` leaves there)
    stops, rather than read that file's bytes at the old one's places.
    """

    path: str
    identity: FileIdentity | None = None

    @classmethod
    def of(cls, path: str, identity: FileIdentity | None = None) -> FileSource:
        """The source of ``path``: a local one by its absolute path, as workers started in
        another folder must find it (they read another file of that name there, or none);
        an fsspec URL as it is."""
        return cls(local_path(path) or path, identity)

    @contextmanager
    def open(self) -> Iterator[FrameReader]:
        try:
            handle = open_file(self.path)
        except FileNotFoundError as error:
            raise SegmentationFileError(
                f"{self.path} no longer exists where this task ran: it was removed or renamed "
                "since it was opened, or the worker's machine does not see that file system."
            ) from error
        with handle:
            if self.identity is not None and file_identity(handle) != self.identity:
                raise SegmentationFileError(
                    f"{self.path} is not the file that was opened: it was replaced or changed "
                    "since, and its frames are no longer where the opened file's header said. "
                    "Open it again to read the file it is now."
                )
            yield FrameReader(handle)


class FrameReader:
    """An open source: the bytes of a frame from its byte ranges."""

    def __init__(self, handle: BinaryIO) -> None:
        self._handle = handle
        self._size = _file_size(handle)

    def read(self, ranges: Sequence[tuple[int, int]]) -> bytes:
        parts = []
        for offset, length in ranges:
            self._handle.seek(offset)
            # A damaged length (the last item may run past a cut file's end) asks no more than
            # the file holds: the frame then reads short, and its decoding says so.
            parts.append(self._handle.read(max(0, min(length, self._size - offset))))
        return b"".join(parts)

    def frames(
        self, layout: FrameLayout, refs: Sequence[FrameRef]
    ) -> Iterator[tuple[FrameLayout, bytes]]:
        for _, ranges in refs:
            yield layout, self.read(ranges)


@functools.lru_cache(maxsize=16)
def _encapsulated(transfer_syntax_uid: str) -> bool:
    # Asked once per frame decoded: a pydicom UID made each time cost 0.2 s per 5,000 frames.
    return UID(transfer_syntax_uid).is_encapsulated


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
        return not _encapsulated(self.transfer_syntax_uid)

    def ranges(self, index: int) -> FrameRanges:
        """Native frames: the byte range holding frame ``index`` (0-based)."""
        pixels = self.rows * self.columns
        if self.bits_allocated == 1:
            first, last = index * pixels, (index + 1) * pixels
            return [(self.pixel_offset + first // 8, -(-last // 8) - first // 8)]
        size = pixels * self.bits_allocated // 8
        return [(self.pixel_offset + index * size, size)]


#: Limits that a damaged or hostile header could otherwise push into huge allocations or graphs:
#: a frame of at most 2**26 pixels (8192 x 8192), and a tile grid of at most 2**22 tiles per
#: segment (a 524,288-pixel-square slide in 256-pixel tiles), far beyond what scanners make.
MAX_FRAME_PIXELS = 2**26
MAX_TILES = 2**22
# Entries (segments x tiles) of a tiled SEG's frame index: 8 bytes each, 256 MiB at most. A
# few KB of header (many segments, a huge grid) asked for GBs; 117 segments of a 100,000²
# slide in 256-pixel tiles take 18M.
MAX_INDEX_ENTRIES = 2**25

_ITEM, _SEQUENCE_END = (0xFFFE, 0xE000), (0xFFFE, 0xE0DD)

#: What pydicom and highdicom raise on a header they cannot parse or interpret: cut short (EOF,
#: struct), garbage lengths (MemoryError), missing or malformed attributes (a UnicodeDecodeError
#: is a ValueError).
HEADER_DAMAGE = (OSError, EOFError, struct.error, MemoryError, AttributeError, KeyError,
                 IndexError, TypeError, ValueError, OverflowError, NotImplementedError,
                 pydicom.errors.BytesLengthException)


def damaged_header(name: str, error: BaseException) -> SegmentationFileError:
    """The error for a header that ``HEADER_DAMAGE`` came from, naming the file."""
    what = "declares an element longer than memory allows" if isinstance(error, MemoryError) \
        else f"cannot be read ({type(error).__name__}: {error})"
    return SegmentationFileError(f"{name}: the DICOM header is damaged or not a SEG's: it {what}.")


# VRs with a 2-byte reserved field and a 4-byte length in explicit VR (PS3.5 Table 7.1-1).
LONG_VRS = frozenset({b"OB", b"OD", b"OF", b"OL", b"OV", b"OW", b"SQ", b"SV", b"UC", b"UN",
                      b"UR", b"UT", b"UV"})


def file_meta_transfer_syntax(data: bytes) -> UID | None:
    """(0002,0010) of the Part 10 file whose "DICM" prefix is the first one in ``data``."""
    at = data.find(b"DICM")
    if at < 0:
        return None
    position = at + 4
    while position + 8 <= len(data):
        group, element = int.from_bytes(data[position : position + 2], "little"), int.from_bytes(
            data[position + 2 : position + 4], "little")
        if group != 0x0002:
            return None
        vr = data[position + 4 : position + 6]
        if vr in LONG_VRS:
            length = int.from_bytes(data[position + 8 : position + 12], "little")
            position += 12
        else:
            length = int.from_bytes(data[position + 6 : position + 8], "little")
            position += 8
        if element == 0x0010:
            value = data[position : position + length]
            if len(value) < length:
                return None
            uid = value.rstrip(b"\x00 ").decode("ascii", "replace")
            return UID(uid) if uid else None
        position += length
    return None


# The start of a file read to find its file meta (PS3.10 7.1: 128-byte preamble, "DICM", group
# 0002, a few hundred bytes), with room for what comes before it (a multipart part's headers).
FILE_META_READ_BYTES = 64 * 2**10


# Segmentation Storage and Label Map Segmentation Storage (PS3.4 B.5).
#: Segmentation Storage and Label Map Segmentation Storage (PS3.4 B.5).
SEG_SOP_CLASSES = frozenset({"1.2.840.10008.5.1.4.1.1.66.4", "1.2.840.10008.5.1.4.1.1.66.7"})


def header_cut_short(handle: BinaryIO, header: Dataset | None, name: str) -> SegmentationFileError | None:
    """The error for a file that ends inside its header, if ``handle`` is at its end after pydicom
    read the header (``header``) or failed to (None); None when it is not.

    pydicom ends a dataset quietly at the end of the file when the file stops between two
    elements: a SEG cut there would read as a header without its SegmentSequence or Pixel Data.
    A file that says it is of another SOP class (an SR has no Pixel Data) is left to the checks.
    """
    size = _file_size(handle)
    if handle.tell() < size:
        return None
    if header is not None:
        syntax = header.get("file_meta", Dataset()).get("TransferSyntaxUID")
    else:
        handle.seek(0)
        syntax = file_meta_transfer_syntax(handle.read(FILE_META_READ_BYTES))
    if syntax is not None and not UID(syntax).is_transfer_syntax:
        # pydicom read the rest as the wrong encoding, to the end: the file meta is damaged.
        return not_a_transfer_syntax(name, syntax)
    if syntax is not None and UID(syntax).is_deflated:
        return None  # pydicom inflates the rest of the file at once: at its end, whatever
    if header is not None:
        sop_class = header.get("SOPClassUID") or header.get("file_meta", Dataset()).get(
            "MediaStorageSOPClassUID")
        if sop_class is not None and str(sop_class) not in SEG_SOP_CLASSES:
            return None
    return _fail(name, f"the file ends at byte {size}, inside its DICOM header (before the "
                       "Pixel Data): it is cut short.")


def not_a_transfer_syntax(name: str, syntax: str) -> SegmentationFileError:
    """The error for a file meta whose Transfer Syntax UID is no transfer syntax pydicom knows."""
    return _fail(name, f"its Transfer Syntax UID (0002,0010) {str(syntax)!r} is not a transfer "
                       "syntax (PS3.5 Annex A): the file meta is damaged.")


def _fail(name: str, what: str) -> SegmentationFileError:
    return SegmentationFileError(f"{name}: {what}")


def header_int(header: Dataset, keyword: str, name: str, *, default: int | None = None,
               low: int = 1, high: int = 2**32 - 1) -> int:
    """An integer attribute of the header, checked to lie in ``[low, high]``."""
    if keyword not in header and default is not None:
        return default
    try:
        value = int(header[keyword].value)
    except KeyError:
        raise _fail(name, f"the header has no {keyword}.") from None
    except (TypeError, ValueError, OverflowError) as error:
        raise _fail(name, f"{keyword} is not an integer ({error}).") from None
    if not low <= value <= high:
        raise _fail(name, f"{keyword} is {value}, outside [{low}, {high}]: the header is "
                          "damaged or not of a SEG daskseg reads.")
    return value


def _read_exact(handle: BinaryIO, size: int, name: str, what: str) -> bytes:
    data = handle.read(size)
    if len(data) != size:
        raise _fail(name, f"the file ends inside {what} (at byte {handle.tell()}): it is cut short.")
    return data


def _file_size(handle: BinaryIO) -> int:
    position = handle.tell()
    size = handle.seek(0, 2)
    handle.seek(position)
    return int(size)


def check_header(
    header: Dataset, name: str, *, transfer_syntax: bool = True, tiled: bool = True
) -> tuple[int, int, int]:
    """Check that ``header`` is of a SEG of a tiled image that daskseg reads (its transfer syntax
    too unless ``transfer_syntax=False``; of a series too with ``tiled=False``); return its
    Rows, Columns and BitsAllocated."""
    if "SegmentSequence" not in header:
        raise _fail(name, "not a DICOM Segmentation (no SegmentSequence).")
    if tiled and "TotalPixelMatrixRows" not in header:
        syntax = UID(str(header.file_meta.get("TransferSyntaxUID", "")))
        if syntax.is_transfer_syntax and (syntax.is_deflated or not syntax.is_little_endian):
            raise _fail(name, f"a SEG of a series or multi-frame image in transfer syntax "
                              f"{syntax} ({syntax.name}) is not one daskseg reads; "
                              "highdicom.seg.segread reads it.")
        raise _fail(name, "the SEG is not of a tiled image (no TotalPixelMatrixRows); "
                          "open_segmentation reads SEGs of series and multi-frame images too.")
    if tiled:
        for keyword in ("TotalPixelMatrixFocalPlanes", "NumberOfOpticalPaths"):
            if int(header.get(keyword) or 1) != 1:
                raise _fail(name, f"{keyword} is {header.get(keyword)}: daskseg reads SEGs of "
                                  "one focal plane and one optical path.")
    if transfer_syntax:
        syntax = UID(str(header.file_meta.get("TransferSyntaxUID", "")))
        if syntax not in CODECS:
            known = syntax.name if syntax.is_transfer_syntax else "an unknown UID"
            raise _fail(name, f"transfer syntax {syntax} ({known}) is not one daskseg reads "
                              f"({', '.join(CODECS)}).")
    rows = header_int(header, "Rows", name, high=65535)
    columns = header_int(header, "Columns", name, high=65535)
    if rows * columns > MAX_FRAME_PIXELS:
        raise _fail(name, f"frames of {rows} x {columns} pixels are larger than daskseg reads "
                          f"({MAX_FRAME_PIXELS} pixels): the header is damaged.")
    bits = header_int(header, "BitsAllocated", name, low=1, high=64)
    if bits not in (1, 8, 16):  # PS3.3 C.8.20.2: 1 (BINARY), 8 or 16
        raise _fail(name, f"BitsAllocated is {bits}; a SEG has 1, 8 or 16.")
    return rows, columns, bits


def segment_items(header: Dataset) -> list[Dataset]:
    """The SegmentSequence items read as segments, by number.

    A label map describes its background (the PixelPaddingValue) as a segment too; like
    highdicom, it is not one of the segments read. By number: a TILED_FULL SEG's frames are in
    increasing segment number (PS3.3 C.7.6.17.3, as highdicom reads them), whatever the order
    of the SegmentSequence.
    """
    padding = header.get("PixelPaddingValue")
    return sorted((item for item in header.SegmentSequence if item.SegmentNumber != padding),
                  key=lambda item: int(item.SegmentNumber))


def describe_segments(header: Dataset, name: str) -> list[Any]:
    """highdicom's SegmentDescription of each segment read (:func:`segment_items`).

    highdicom checks each item against the standard, which takes 3-5 ms a segment (0.4-0.6 s
    for TotalSegmentator's 117): the readers make these when first asked for, not when opened.
    """
    import highdicom as hd

    try:
        return [hd.seg.SegmentDescription.from_dataset(item) for item in segment_items(header)]
    except HEADER_DAMAGE as error:
        raise SegmentationFileError(
            f"{name}: a SegmentSequence item is not a valid segment description "
            f"({type(error).__name__}: {error})."
        ) from error


def check_segmentation(header: Dataset, segment_numbers: Sequence[int], bits: int,
                       name: str) -> str:
    """Check the SegmentationType and what goes with it against ``segment_numbers`` and the
    pixels' ``bits``; return the type."""
    kind = str(header.SegmentationType)
    if kind not in ("BINARY", "FRACTIONAL", "LABELMAP"):
        raise _fail(name, f"SegmentationType {kind!r} is not BINARY, FRACTIONAL or LABELMAP.")
    if not segment_numbers:
        raise _fail(name, "its SegmentSequence describes no segment (PS3.3 C.8.20.2).")
    if len(set(segment_numbers)) != len(segment_numbers):
        raise _fail(name, f"the SegmentSequence repeats segment numbers {list(segment_numbers)}.")
    expected_bits = {"BINARY": (1,), "FRACTIONAL": (8,), "LABELMAP": (8, 16)}[kind]
    if bits not in expected_bits:
        # PS3.3 C.8.20.2: a BINARY SEG's pixels are bits, a FRACTIONAL's bytes; read as the
        # other, their values would be wrong (a BINARY of 0 and 255, say).
        raise _fail(name, f"a {kind} SEG has BitsAllocated "
                          f"{' or '.join(map(str, expected_bits))}, this one {bits}: the header "
                          "is inconsistent.")
    if kind == "FRACTIONAL":
        header_int(header, "MaximumFractionalValue", name, high=2**bits - 1)
    if segment_numbers and kind == "LABELMAP" and max(segment_numbers) >= 2**bits:
        raise _fail(name, f"the LABELMAP describes segment {max(segment_numbers)}, which its "
                          f"{bits}-bit pixels cannot hold: the header is inconsistent.")
    return kind


def locate_frames(
    handle: BinaryIO, header: Dataset, start: int, *, name: str = "The file", tiled: bool = True
) -> tuple[FrameLayout, list[FrameRanges] | None]:
    """The layout of the Pixel Data at ``start``, and each frame's byte ranges when encapsulated.

    Everything is checked against the file's size and the header's NumberOfFrames before any
    allocation: a damaged or hostile file raises :class:`SegmentationFileError` naming ``name``.
    ``tiled=False``: a SEG of a series or multi-frame image too (the volume reader).
    """
    rows, columns, bits = check_header(header, name, tiled=tiled)
    syntax = UID(str(header.file_meta.TransferSyntaxUID))
    size = _file_size(handle)
    # Each frame takes at least a byte of the file (native) or an 8-byte item header.
    n_frames = header_int(header, "NumberOfFrames", name, default=1, high=max(8 * size, 1))
    encapsulated = codec_for(syntax).encapsulated  # type: ignore[union-attr]
    handle.seek(start)
    element = _read_exact(handle, 8, name, "the Pixel Data element")
    if struct.unpack("<HH", element[:4]) != (0x7FE0, 0x0010):
        raise _fail(name, "the SEG has no Pixel Data.")
    if syntax.is_implicit_VR:
        (length,) = struct.unpack("<I", element[4:])
    else:
        (length,) = struct.unpack("<I", _read_exact(handle, 4, name, "the Pixel Data element"))
    value_start = handle.tell()
    layout = FrameLayout(str(syntax), rows, columns, bits, value_start)
    if not encapsulated:
        if length == 0xFFFFFFFF:
            # PS3.5 A.4: undefined length is for encapsulated Pixel Data only; read as native,
            # the items' bytes would be taken for pixels.
            raise _fail(name, f"the Pixel Data has undefined length, as encapsulated (compressed) "
                              f"frames have, but the transfer syntax {syntax} "
                              f"({syntax.name}) is native: the file's TransferSyntaxUID is "
                              "probably wrong.")
        needed = -(-n_frames * rows * columns * bits // 8)
        if length < needed:
            raise _fail(name, f"the Pixel Data holds {length} bytes, but NumberOfFrames "
                              f"{n_frames} of {rows} x {columns} x {bits} bits need {needed}: "
                              "the header and the pixel data disagree.")
        # Native frames follow each other without a gap, the whole padded to even length (PS3.5
        # 7.1.1, 8.1.1): a frame's worth more is another frame or other frames, and each frame
        # would be read from the wrong place (1-bit frames each packed into bytes of its own, as
        # highdicom 0.28 writes frames of fewer than 8 pixels, are such a file).
        frame_bytes = -(-rows * columns * bits // 8)
        if length - needed >= max(frame_bytes, 2):
            apart = bits == 1 and rows * columns < 8 and n_frames <= length <= n_frames + 1
            raise _fail(name, f"the Pixel Data holds {length} bytes, {length - needed} more than "
                              f"NumberOfFrames {n_frames} of {rows} x {columns} x {bits} bits "
                              f"need ({needed}): " + (
                                  "each frame of fewer than 8 pixels is in a byte of its own "
                                  "(as highdicom 0.28 writes them), where PS3.5 8.1.1 packs "
                                  "frames bit after bit, so no pixel is where it would be read."
                                  if apart else
                                  "more frames than the header counts, or frames of another "
                                  "size or packing, so none is where it would be read."))
        if value_start + needed > size:
            raise _fail(name, f"the file ends {value_start + needed - size} bytes short of its "
                              f"{n_frames} frames: it is cut short.")
        return layout, None
    if length != 0xFFFFFFFF:
        raise _fail(name, "encapsulated Pixel Data of defined length (PS3.5 A.4 needs undefined "
                          "length).")
    return layout, _encapsulated_frames(handle, header, n_frames, size, name)


def _items(handle: BinaryIO, size: int, name: str) -> tuple[list[tuple[int, int]], bool]:
    """(value offset, length) of the fragment items after the Basic Offset Table (PS3.5 A.4),
    and whether the file ends before their sequence delimiter (it is cut short).

    The last item may run past the end of a cut file; its frame's read then fails, not the
    others'.
    """
    items: list[tuple[int, int]] = []
    while handle.tell() + 8 <= size:
        at = handle.tell()
        group, element, length = struct.unpack("<HHI", handle.read(8))
        if (group, element) == _SEQUENCE_END:
            return items, False
        if (group, element) != _ITEM:
            raise _fail(name, f"at byte {at} of the encapsulated Pixel Data, ({group:04X},"
                              f"{element:04X}) where a fragment item should be: the file is "
                              "damaged.")
        items.append((at + 8, length))
        handle.seek(at + 8 + length)
    return items, True  # no sequence delimiter: the file is cut short


def _encapsulated_frames(handle: BinaryIO, header: Dataset, n_frames: int, size: int,
                         name: str) -> list[FrameRanges]:
    """Each frame's fragments, from the offset tables or the items (PS3.5 A.4, PS3.3 C.7.6.3)."""
    bot_item = _read_exact(handle, 8, name, "the Basic Offset Table")
    group, element, bot_length = struct.unpack("<HHI", bot_item)
    if (group, element) != _ITEM or bot_length % 4 or handle.tell() + bot_length > size:
        raise _fail(name, "the Basic Offset Table item is damaged or cut short.")
    bot = [int(v) for v in np.frombuffer(_read_exact(handle, bot_length, name,
                                                     "the Basic Offset Table"), "<u4")]
    first_fragment = handle.tell()
    items, cut = _items(handle, size, name)
    if not items:
        raise _fail(name, "the encapsulated Pixel Data holds no fragments"
                          + (f" (the file ends at byte {size}: it is cut short)." if cut else "."))
    # Past the last fragment found: an offset there is of a frame the file has lost.
    last_item = items[-1][0] - 8 - first_fragment

    def lost(index: int, offset: int) -> SegmentationFileError | None:
        if not (cut and offset > last_item):
            return None
        return _fail(name, f"the file ends at byte {size}, before frame {index + 1} of "
                           f"{n_frames}: it is cut short.")
    # Offsets in the tables count from the first fragment's item tag.
    item_at = {value - 8 - first_fragment: k for k, (value, _) in enumerate(items)}

    if "ExtendedOffsetTable" in header:
        # PS3.3 C.7.6.3.1.8: one fragment per frame; the offset of its item tag and the length
        # of the frame's bytes in it.
        offsets = np.frombuffer(header.ExtendedOffsetTable, "<u8")
        lengths = np.frombuffer(header.get("ExtendedOffsetTableLengths", b""), "<u8")
        if len(offsets) != n_frames or len(lengths) != n_frames:
            raise _fail(name, f"the Extended Offset Table has {len(offsets)} offsets and "
                              f"{len(lengths)} lengths for NumberOfFrames {n_frames}.")
        frames = []
        for index, (offset, length) in enumerate(zip(offsets.tolist(), lengths.tolist())):
            k = item_at.get(offset)
            if k is None and (error := lost(index, offset)) is not None:
                raise error
            if k is None or (index and offset <= offsets[index - 1]):
                raise _fail(name, f"frame {index + 1}: the Extended Offset Table's offset "
                                  f"{offset} is not at the next fragment item.")
            if length > items[k][1]:
                raise _fail(name, f"frame {index + 1}: the Extended Offset Table's length "
                                  f"{length} runs past its fragment of {items[k][1]} bytes.")
            frames.append([(items[k][0], length)])
        return frames
    if bot:
        # PS3.5 A.4.1: the first entry is 0, and the entries increase, one per frame.
        if len(bot) != n_frames:
            raise _fail(name, f"the Basic Offset Table has {len(bot)} entries for "
                              f"NumberOfFrames {n_frames}.")
        bounds = []
        for index, offset in enumerate(bot):
            k = item_at.get(offset)
            if k is None and index and offset > bot[index - 1] and (
                    error := lost(index, offset)) is not None:
                raise error
            if k is None or (index == 0 and offset != 0) or (index and offset <= bot[index - 1]):
                raise _fail(name, f"frame {index + 1}: the Basic Offset Table's entry {offset} "
                                  "is not at a fragment item after the previous frame's.")
            bounds.append(k)
        bounds.append(len(items))
        return [items[bounds[i] : bounds[i + 1]] for i in range(n_frames)]
    if len(items) == n_frames:
        return [[item] for item in items]
    if n_frames == 1:
        return [items]
    if cut and len(items) < n_frames:
        raise _fail(name, f"the file ends at byte {size}, after {len(items)} fragments of "
                          f"NumberOfFrames {n_frames}: it is cut short.")
    raise _fail(name, f"{len(items)} fragments for NumberOfFrames {n_frames} and no offset "
                      "table: where each frame starts cannot be known (PS3.5 A.4 needs a Basic "
                      "or Extended Offset Table when frames span fragments), or the file is "
                      "damaged.")


def _item_position(item: Dataset, shared: tuple[int, int] | None) -> tuple[int, int] | None:
    """A pydicom item's (row, column) in the total pixel matrix, else the shared one."""
    if "PlanePositionSlideSequence" not in item:
        return shared
    try:
        position = item.PlanePositionSlideSequence[0]
        return (int(position.RowPositionInTotalImagePixelMatrix),
                int(position.ColumnPositionInTotalImagePixelMatrix))
    except (AttributeError, IndexError, TypeError, ValueError):
        return None


def index_frames(header: Dataset, segment_numbers: list[int], grid: TileGrid, *,
                 name: str = "The file", frames: Sequence[Any] | None = None) -> np.ndarray:
    """Frame index (0-based, -1 if absent) of each (channel, tile row, tile column).

    ``frames``: the per-frame items as a raw walk of the file read them (``_volframes``'s
    ``FrameItem``: tile position and segment), else they are the header's pydicom items.
    """
    labelmap = header.SegmentationType == "LABELMAP"
    n_channels = 1 if labelmap else len(segment_numbers)
    grid_shape = (grid.n_tile_rows, grid.n_tile_columns)
    n_tiles = grid_shape[0] * grid_shape[1]
    if n_tiles > MAX_TILES:
        raise _fail(name, f"a total pixel matrix of {grid.rows} x {grid.columns} pixels in "
                          f"{grid.tile_rows} x {grid.tile_columns} tiles is {n_tiles} tiles, more "
                          f"than daskseg reads ({MAX_TILES}): the header is damaged.")
    if n_channels * n_tiles > MAX_INDEX_ENTRIES:
        raise _fail(name, f"{n_channels} segments of {n_tiles} tiles each are more frames "
                          f"than daskseg indexes ({MAX_INDEX_ENTRIES}): the header is damaged.")
    number_of_frames = int(header.get("NumberOfFrames", 1))
    if header.get("DimensionOrganizationType") == "TILED_FULL":
        # PS3.3 C.7.6.17.3: implicit order, segment slowest, then tile row, then column.
        if not labelmap and list(segment_numbers) != list(range(1, n_channels + 1)):
            # Frames without a segment number of their own are segments 1..N by position
            # (PS3.3 C.8.20.2.x: numbers start at 1 and increase by 1); other numbers leave
            # the pairing unknown, and highdicom reads such frames as no segment's.
            raise _fail(name, f"a TILED_FULL SEG's frames are segments 1..{n_channels} in "
                              f"order, but its SegmentSequence numbers them "
                              f"{list(segment_numbers)}: the header is inconsistent.")
        if number_of_frames != n_channels * n_tiles:
            raise _fail(name, f"a TILED_FULL SEG of {n_channels} x {grid_shape[0]} x "
                              f"{grid_shape[1]} frames (channels x tile rows x tile columns) "
                              f"says it has NumberOfFrames {number_of_frames}: the header is "
                              "inconsistent.")
        return np.arange(n_channels * n_tiles, dtype=np.int64).reshape(n_channels, *grid_shape)
    items = header.get("PerFrameFunctionalGroupsSequence") if frames is None else frames
    if items is None or len(items) != number_of_frames:
        raise _fail(name, f"{0 if items is None else len(items)} per-frame functional group "
                          f"items for NumberOfFrames {number_of_frames}: the header is damaged.")
    shared = header.SharedFunctionalGroupsSequence[0]
    shared_segment = None
    if "SegmentIdentificationSequence" in shared:
        shared_segment = int(shared.SegmentIdentificationSequence[0].ReferencedSegmentNumber)
    shared_position: tuple[int, int] | None = None
    with contextlib.suppress(AttributeError, IndexError, TypeError, ValueError):
        # A group the same for every frame may be shared (PS3.3 C.7.6.16): a SEG of one
        # tile has its position there; a frame's own comes first.
        position = shared.PlanePositionSlideSequence[0]
        shared_position = (int(position.RowPositionInTotalImagePixelMatrix),
                           int(position.ColumnPositionInTotalImagePixelMatrix))
    channel_of = {number: k for k, number in enumerate(segment_numbers)}
    tile_rows, tile_columns = grid.tile_rows, grid.tile_columns
    table = np.full((n_channels, *grid_shape), -1, dtype=np.int64)
    for index, item in enumerate(items):
        if frames is not None:
            at, own_number = item.tile_position or shared_position, item.segment
            if at == (0, 0):  # its own group, without valid positions (1-based: never 0)
                at = None
        else:
            at, own_number = _item_position(item, shared_position), None
            if "SegmentIdentificationSequence" in item:
                own_number = int(item.SegmentIdentificationSequence[0].ReferencedSegmentNumber)
        if at is None:
            raise _fail(name, f"frame {index + 1} has no valid position in the total pixel "
                              "matrix (PlanePositionSlideSequence).")
        row_position, column_position = at
        row, row_offset = divmod(row_position - 1, tile_rows)
        column, column_offset = divmod(column_position - 1, tile_columns)
        if row_offset or column_offset or not (
            0 <= row < grid_shape[0] and 0 <= column < grid_shape[1]
        ):
            raise _fail(name, f"frame {index + 1} is at row {row_position}, column "
                              f"{column_position} of the total pixel matrix, not at a tile of "
                              f"the {tile_rows} x {tile_columns} grid; daskseg reads SEGs whose "
                              "frames are the tiles of the image (use highdicom for others).")
        if labelmap:
            number = None
        elif own_number is not None:
            number = own_number
        elif shared_segment is not None:
            number = shared_segment
        else:
            raise _fail(name, f"frame {index + 1} names no segment (no "
                              "SegmentIdentificationSequence): the SEG is invalid.")
        channel = 0 if number is None else channel_of.get(number, -1)
        if channel < 0:
            raise _fail(name, f"frame {index + 1} is of segment {number}, which the "
                              f"SegmentSequence does not describe ({segment_numbers}).")
        if table[channel, row, column] >= 0:
            raise _fail(name, f"frames {table[channel, row, column] + 1} and {index + 1} are "
                              f"both at row {row_position}, column {column_position}"
                              f"{'' if number is None else f' of segment {number}'}.")
        table[channel, row, column] = index
    return table
