"""The SEG file: header, per-frame items, Pixel Data with its offset tables, the atomic rename.

Frames come from the spool in file order. Native frames are joined into one Pixel Data element
(1-bit frames back to back, PS3.5 8.1.1); encapsulated ones become one fragment each with a Basic
Offset Table, or an Extended Offset Table past 4 GiB (PS3.5 A.4). The file is written under a
temporary name beside the destination and renamed into place only when complete.
"""

from __future__ import annotations

import contextlib
import contextvars
import errno
import io
import os
import pathlib
import shutil
import stat
import struct
import uuid
from collections.abc import Callable, Iterator
from typing import Any, BinaryIO

import numpy as np
import pydicom
from pydicom.charset import convert_encodings, default_encoding
from pydicom.dataelem import RawDataElement
from pydicom.dataset import Dataset
from pydicom.filebase import DicomBytesIO
from pydicom.filewriter import correct_ambiguous_vr, write_sequence
from pydicom.uid import ImplicitVRLittleEndian, JPEG2000Lossless

from daskseg._header import FrameItems, element_header, encoded_items, item
from daskseg._inputs import not_a_regular_file
from daskseg._spool import Spool, new_file_beside
from daskseg.encode import encode_frame, write_all
from daskseg.errors import DestinationExistsError, SegmentationInputError
from daskseg.plan import FrameSpec, TileGrid, included_frames

__all__ = [
    "SequencesAhead", "check_native_size", "file_beside", "replace_atomically", "temporary_beside",
    "write_file", "write_pixel_data",
]

_MAX_NATIVE_BYTES = 0xFFFFFFFE  # a native Pixel Data element has a 32-bit, even length
_MAX_BOT_OFFSET = 0xFFFFFFFF  # Basic Offset Table entries are 32-bit
_PFFG_TAG = 0x52009230  # Per-frame Functional Groups Sequence
_UNDEFINED = 0xFFFFFFFF


class SequencesAhead:
    """Sequences of a header serialized ahead of writing it, in the thread that built it.

    A volume's header lists every source image twice (SourceImageSequence and the
    ReferencedSeriesSequence: 300 items each for a CT series) and describes every segment
    (SegmentSequence: 117 items for TotalSegmentator). pydicom took about 0.1 s to write them
    once the last block was in, with nothing else left to do. Serialized while the blocks
    encode, they are written as raw elements, as pydicom writes a dataset read from a file.

    Parameters
    ----------
    header : pydicom.Dataset
        The header, with its file meta (which gives the transfer syntax).
    keywords : sequence of str
        The top-level sequences to serialize; they must not change afterwards (a sequence
        replaced, or given items or lost some, is written anew).
    """

    def __init__(self, header: Dataset, keywords: tuple[str, ...]) -> None:
        self.implicit = header.file_meta.TransferSyntaxUID == ImplicitVRLittleEndian
        # As pydicom's Dataset._character_set, which the original one must equal for raw
        # elements to be written as they are.
        character_set = header.get("SpecificCharacterSet")
        self.character_set = convert_encodings(character_set) if character_set else default_encoding
        self.encodings = convert_encodings(self.character_set)
        self._encoded: dict[int, tuple[Any, int, bytes]] = {}
        for keyword in keywords:
            if keyword not in header:
                continue
            element = header[keyword]
            value = encoded_items(element.value, self.implicit)
            if value is None:  # not plain: pydicom writes it
                buffer = DicomBytesIO()
                buffer.is_little_endian, buffer.is_implicit_VR = True, self.implicit
                write_sequence(buffer, element, self.encodings)
                value = buffer.getvalue()
            self._encoded[int(element.tag)] = (element.value, len(element.value), value)

    def raw_elements(self, body: Dataset) -> dict[int, RawDataElement]:
        """The body's sequences that are as they were serialized, as raw elements."""
        raws = {}
        for tag, (sequence, length, value) in self._encoded.items():
            element = body.get(tag)
            if element is not None and element.value is sequence and len(sequence) == length:
                raws[tag] = RawDataElement(element.tag, "SQ", len(value), value, 0,
                                           self.implicit, True)
        return raws


def _write_body(out: BinaryIO, body: Dataset, ahead: SequencesAhead | None) -> None:
    """``pydicom.dcmwrite`` of the body, with the sequences serialized ahead written as they are.

    pydicom writes raw elements unchanged when the dataset's original encoding is the one
    written (``Dataset.set_original_encoding``); it then leaves ambiguous VRs (US or SS, say)
    alone, so those of the other elements are resolved here first, as it would.
    """
    if ahead is not None and (raws := ahead.raw_elements(body)):
        correct_ambiguous_vr(Dataset({tag: element for tag, element in body.items()
                                      if tag not in raws}), True)
        for tag, raw in raws.items():
            body[tag] = raw
        body.set_original_encoding(ahead.implicit, True, ahead.character_set)
    pydicom.dcmwrite(out, body, enforce_file_format=True)


def check_native_size(spec: FrameSpec, grid: TileGrid) -> None:
    """Raise before any work if native Pixel Data would not fit a DICOM element."""
    if not spec.is_native:
        return
    n_frames = spec.n_channels * grid.n_tiles
    native_bytes = -(-spec.bits_allocated * grid.pixels_per_frame * n_frames // 8)
    if native_bytes > _MAX_NATIVE_BYTES:
        raise SegmentationInputError(
            f"Native pixel data of {native_bytes / 2**30:.1f} GiB does not fit a DICOM "
            "element (4 GiB at most); use an encapsulated transfer syntax such as "
            f"JPEG 2000 Lossless ({JPEG2000Lossless})."
        )


#: A full disk, or a quota (EDQUOT, not in every platform's errno).
FULL_DISK_ERRNOS = frozenset({errno.ENOSPC, getattr(errno, "EDQUOT", errno.ENOSPC)})


@contextlib.contextmanager
def naming_a_full_disk(destination: pathlib.Path, what: str = "the SEG",
                       spooled: bool = True) -> Iterator[None]:
    """A full disk (or quota) met while ``what`` is written says which folder: the bare
    OSError named nothing (the spool's files, or the partial store or file, are hidden,
    beside the destination). So does a destination folder removed meanwhile: the bare error
    named a hidden file of the spool. ``spooled``: a SEG's frames are spooled beside it."""
    try:
        yield
    except FileNotFoundError as error:
        if destination.parent.is_dir():
            raise
        raise FileNotFoundError(
            errno.ENOENT,
            f"The destination folder was removed while {what} {destination.name} was written, "
            "so nothing was written; create the folder and write again",
            str(destination.parent),
        ) from error
    except OSError as error:
        if error.errno is not None and error.errno in FULL_DISK_ERRNOS and error.filename is None:
            how = " (its frames are spooled beside it, then assembled there)" if spooled else ""
            raise OSError(
                error.errno,
                f"{os.strerror(error.errno)}: no room to write {what} {destination.name}{how}; "
                "free space, or write it elsewhere",
                str(destination.parent),
            ) from error
        raise


def temporary_beside(destination: pathlib.Path, suffix: str) -> tuple[int, pathlib.Path]:
    """A new, empty file beside ``destination`` to be renamed onto it: its descriptor and path.

    It gets the permissions that writing ``destination`` in place would leave: those of the file
    it replaces, else ``0o666`` less the umask, as ``open`` gives. ``tempfile.mkstemp``'s
    ``0o600`` would survive the rename and hide the result from the rest of a group that shares
    the folder (a pipeline's output, a viewer's import folder).
    """
    try:
        kept: int | None = stat.S_IMODE(destination.stat().st_mode)
    except OSError:
        kept = None
    handle, path = new_file_beside(destination, suffix, 0o666)  # the umask applies, as for open()
    if kept is not None:
        try:
            os.chmod(path, kept)
        except BaseException:
            os.close(handle)
            os.unlink(path)
            raise
    return handle, path


@contextlib.contextmanager
def file_beside(destination: pathlib.Path, suffix: str,
                overwrite: bool = True) -> Iterator[pathlib.Path]:
    """The path of a new, empty file beside ``destination`` (see :func:`temporary_beside`) to
    write by name; renamed onto ``destination`` when the block ends, removed on any error."""
    handle, temporary = temporary_beside(destination, suffix)
    try:
        os.close(handle)  # in the try: a signal's exception may come as it returns
        yield temporary
        replace_atomically(temporary, destination, overwrite)
    except BaseException:
        with contextlib.suppress(OSError):  # the write's own error is the one to see
            os.unlink(temporary)
        raise


def replace_atomically(temporary: pathlib.Path, destination: pathlib.Path, overwrite: bool) -> None:
    """Rename the finished file into place; never replace a file that appeared meanwhile."""
    appeared = DestinationExistsError(
        f"{destination} appeared while writing; pass overwrite=True to replace it."
    )
    if (special := not_a_regular_file(destination)) is not None:
        raise special  # checked before the work too; this one may have appeared since
    if not overwrite:
        # A hard link is made only where no file is: no other writer can slip in between a
        # check and the rename. A file system without hard links gets the check and rename.
        try:
            os.link(temporary, destination)
        except FileExistsError:
            raise appeared from None
        except OSError:
            if os.path.lexists(destination):  # a link to nowhere too, as check_destination
                raise appeared from None
        else:
            os.unlink(temporary)
            return
    os.replace(temporary, destination)


def replace_tree(partial: pathlib.Path, destination: pathlib.Path) -> None:
    """Put the finished store ``partial`` in the place of ``destination`` (a store or a file).

    The old one is renamed aside first and removed last: an interruption in between leaves
    it beside, under a hidden name, rather than neither.
    """
    if not destination.exists() and not destination.is_symlink():
        partial.rename(destination)
        return
    aside = destination.with_name(f".{destination.name}.{uuid.uuid4().hex[:8]}.old")
    try:
        # Both renames in the try: a signal's exception (Ctrl-C, SIGTERM in the CLI) can come
        # as either returns.
        destination.rename(aside)
        partial.rename(destination)
    except BaseException:
        if not os.path.lexists(destination):
            with contextlib.suppress(OSError):  # else the old one stays, under its hidden name
                aside.rename(destination)  # the old one back
        elif os.path.lexists(aside) and not os.path.lexists(partial):
            _remove(aside)  # the new one is in place after all: the old one goes as planned
        raise
    _remove(aside)


def _remove(path: pathlib.Path) -> None:
    """Remove a file, link or folder tree, as far as possible."""
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)


def _runs(spool: Spool, order: np.ndarray) -> tuple[np.ndarray, ...]:
    """Where the frames in ``order`` are in the spool, and the runs they make.

    Returns ``starts`` and ``ends`` (indices into ``order``) of each run, and each frame's
    ``offsets``, ``lengths`` (-1: missing) and ``sources``. A run starts at the first frame,
    after or at a missing frame, and where the spool jumps (to another place or another
    worker's file): the frames of a run follow each other in one file.
    """
    where = tuple(order.T)
    offsets, lengths, sources = spool.offsets[where], spool.lengths[where], spool.source[where]
    starts = np.flatnonzero(np.concatenate([
        [True],
        (lengths[1:] < 0) | (lengths[:-1] < 0) | (sources[1:] != sources[:-1])
        | (offsets[1:] != offsets[:-1] + lengths[:-1]),
    ])) if len(order) else np.zeros(0, dtype=np.int64)
    ends = np.append(starts[1:], len(order))
    return starts, ends, offsets, lengths, sources


def _descriptor(out: BinaryIO) -> int | None:
    """The file descriptor behind ``out``, its buffer flushed, to write past it; None when
    ``out`` is not a file on disk (a BytesIO, say)."""
    try:
        out.flush()
        return out.fileno()
    except (AttributeError, io.UnsupportedOperation):
        return None


def _copy_frames(out: BinaryIO, spool: Spool, order: np.ndarray, empty: bytes) -> int:
    """Append the frames in ``order`` to ``out`` as they are; return the bytes written.

    Each run of frames that follow each other in the spool too (a block's frames of one
    segment) is copied file to file by the kernel (``copy_file_range``) where it can, instead
    of passing every frame through Python.
    """
    starts, ends, offsets, lengths, sources = _runs(spool, order)
    written = 0
    destination = _descriptor(out)
    if destination is None:  # not a file on disk: through memory
        for start, end in zip(starts.tolist(), ends.tolist()):
            for index in range(start, end):
                data = empty if lengths[index] < 0 else spool.read(*order[index])
                out.write(data)
                written += len(data)
        return written
    for start, end in zip(starts.tolist(), ends.tolist()):
        if lengths[start] < 0:
            data = empty * (end - start)
            write_all(destination, data)
            written += len(data)
            continue
        offset, size = int(offsets[start]), int(lengths[start:end].sum())
        _copy_range(spool.sources[sources[start]], destination, offset, size)
        written += size
    out.seek(0, os.SEEK_END)  # the buffered file learns where the descriptor now is
    return written


def _write_items(out: BinaryIO, spool: Spool, order: np.ndarray, empty: bytes) -> None:
    """Append the frames in ``order`` to ``out``, each as one item (one fragment, padded to
    even length with a zero byte: PS3.5 A.4), as pydicom's ``itemize_frame`` makes them.

    A run of frames that follow each other in the spool is read with one call, not one a
    frame (a SEG of 50k frames spent half a second here on pread and pydicom per frame), and
    items are written many at a time with ``os.writev`` where ``out`` is a file: through the
    buffered file, each frame's header and data took a system call each (1024 HTJ2K frames,
    18 MiB, in a write: 15-22 ms, against 6-9 ms gathered).
    """
    starts, ends, offsets, lengths, sources = _runs(spool, order)
    destination = _descriptor(out) if hasattr(os, "writev") else None  # no writev on Windows
    pad = b"\x00"
    parts: list[bytes | memoryview] = []
    gathered = 0
    for start, end in zip(starts.tolist(), ends.tolist()):
        if lengths[start] < 0:
            parts.append(_item(empty) * (end - start))
            gathered += len(parts[-1])
        else:
            sizes = lengths[start:end].tolist()
            run = memoryview(os.pread(spool.sources[sources[start]], sum(sizes),
                                      int(offsets[start])))
            if len(run) != sum(sizes):
                raise OSError(f"The spool ended {sum(sizes) - len(run)} bytes early")
            at = 0
            for size in sizes:
                parts.append(struct.pack("<HHI", 0xFFFE, 0xE000, size + size % 2))
                parts.append(run[at : at + size])
                if size % 2:
                    parts.append(pad)
                at += size
            gathered += len(run)
        # A run longer than the bound is written on its own, as it was read.
        if len(parts) >= _GATHER_PARTS or gathered >= _GATHER_BYTES:
            _write_parts(out, destination, parts)
            parts, gathered = [], 0
    _write_parts(out, destination, parts)
    if destination is not None:
        out.seek(0, os.SEEK_END)  # the buffered file learns where the descriptor now is


# Items' parts (headers, frames, padding) and bytes gathered for one write, at most. Bytes
# beyond about 1 MiB made it slower, not faster: gathering 4-16 MiB of runs before writing
# them took 26-44 ms now and then for 1024 HTJ2K frames (18 MiB), against 6-10 ms.
_GATHER_PARTS = 1024
_GATHER_BYTES = 2**20


def _iov_max() -> int:
    """The most buffers one ``writev`` takes (1024 on Linux; POSIX promises 16)."""
    try:
        limit = os.sysconf("SC_IOV_MAX")
    except (AttributeError, ValueError, OSError):
        return 16
    return limit if limit > 0 else 16


_IOV_MAX = _iov_max()


def _write_parts(out: BinaryIO, destination: int | None,
                 parts: list[bytes | memoryview]) -> None:
    """Write ``parts`` one after another: with ``os.writev`` to the descriptor ``destination``,
    else through ``out``."""
    if destination is None:
        for part in parts:
            out.write(part)
        return
    index = 0
    while index < len(parts):
        written = os.writev(destination, parts[index : index + _IOV_MAX])
        # A write may stop short (a signal, a full disk writes what fits first): go on from
        # where it stopped. A full disk then raises (ENOSPC); a write of nothing never ends.
        if not written and any(len(part) for part in parts[index : index + _IOV_MAX]):
            raise OSError(f"Writing the frames to descriptor {destination} wrote nothing")
        while index < len(parts) and written >= len(parts[index]):
            written -= len(parts[index])
            index += 1
        if written:
            parts[index] = memoryview(parts[index])[written:]


def _item(frame: bytes) -> bytes:
    """One frame as one item of encapsulated Pixel Data, padded to even length."""
    return item(frame + b"\x00" * (len(frame) % 2))


def _copy_range(source: int, destination: int, offset: int, size: int) -> None:
    """Append ``size`` bytes of ``source`` from ``offset`` to ``destination``."""
    copy_file_range = getattr(os, "copy_file_range", None)  # Linux and FreeBSD only
    while size:
        copied = 0
        if copy_file_range is not None:
            try:
                copied = copy_file_range(source, destination, size, offset)
            except OSError:  # a file system or kernel without it: copy through memory
                copy_file_range = None
        if not copied:
            data = os.pread(source, min(size, 16 * 2**20), offset)
            if not data:
                raise OSError(f"The spool ended {size} bytes early")
            write_all(destination, data)
            copied = len(data)
        offset += copied
        size -= copied


def write_pixel_data(
    out: BinaryIO,
    spool: Spool,
    order: np.ndarray,
    spec: FrameSpec,
    grid: TileGrid,
    implicit: bool,
    use_extended_offset_table: bool | None,
    empty_frame: bytes | None,
) -> None:
    """Append the (extended) offset tables and Pixel Data, frames in file order."""

    empty = empty_frame if empty_frame is not None else b""  # set when frames are missing

    def frames() -> Iterator[bytes]:
        for channel, tile_row, tile_column in order:
            if spool.lengths[channel, tile_row, tile_column] < 0:
                yield empty
            else:
                yield spool.read(channel, tile_row, tile_column)

    n_frames = len(order)
    if spec.is_native:
        bits = spec.bits_allocated * grid.pixels_per_frame * n_frames
        length = -(-bits // 8)
        length += length % 2  # write_segmentation checked that it fits 32 bits
        vr = "OB" if spec.bits_allocated <= 8 else "OW"
        out.write(element_header(0x7FE00010, vr, length, implicit))
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
            written = _copy_frames(out, spool, order, empty)
        out.write(b"\x00" * (length - written))
        return

    # Encapsulated (PS3.5 A.4): each frame one fragment, padded to even length.
    lengths = spool.lengths[tuple(order.T)] if n_frames else np.zeros(0, dtype=np.int64)
    lengths = np.where(lengths < 0, len(empty), lengths).astype(np.int64)
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
        out.write(element_header(0x7FE00001, "OV", len(table), implicit) + table)
        sizes = lengths.astype("<u8").tobytes()
        out.write(element_header(0x7FE00002, "OV", len(sizes), implicit) + sizes)
    out.write(element_header(0x7FE00010, "OB", _UNDEFINED, implicit))
    if extended:
        out.write(struct.pack("<HHI", 0xFFFE, 0xE000, 0))
    else:
        bot = offsets.astype("<u4").tobytes()
        out.write(struct.pack("<HHI", 0xFFFE, 0xE000, len(bot)) + bot)
    _write_items(out, spool, order, empty)
    out.write(struct.pack("<HHI", 0xFFFE, 0xE0DD, 0))


#: Called in the writing thread just before a complete SEG is renamed into place: the CLI notes
#: its stop signals from then on rather than raise them. Raised on the way back from the write
#: (even in the microseconds after the rename), one reported a complete file as interrupted.
PUTTING_IN_PLACE: contextvars.ContextVar[Callable[[], None] | None] = contextvars.ContextVar(
    "daskseg_putting_in_place", default=None)


def write_file(
    destination: pathlib.Path,
    header: Dataset,
    spool: Spool,
    spec: FrameSpec,
    grid: TileGrid,
    tiled_full: bool,
    tile_nonempty: np.ndarray,
    hd_options: dict[str, Any],
    use_extended_offset_table: bool | None,
    overwrite: bool,
    items: Any = None,
    ahead: SequencesAhead | None = None,
) -> None:
    """Write header, per-frame items and pixel data to a temporary file beside ``destination``
    and rename it into place; on any error no temporary file is left.

    ``items`` serializes the per-frame items (``items.item(channel, tile_row, tile_column)``,
    as :class:`FrameItems`); a tiled image's by default. ``ahead`` holds sequences of the
    header already serialized (:class:`SequencesAhead`).
    """
    implicit = header.file_meta.TransferSyntaxUID == ImplicitVRLittleEndian
    empty_frame = None
    omitting = spec.omit_empty_frames and not tiled_full
    order = included_frames(spool.lengths) if omitting else None
    if order is None or not len(order):
        # Every tile is included: the dimension index counts them all from 1 (PS3.3
        # C.7.6.17.1), as highdicom's does; empty rows and columns do not drop out of it.
        # highdicom also keeps every frame when it would omit them all (an all-empty mask; so
        # FRACTIONAL fractions that all round to 0 here, where highdicom fails).
        order = np.argwhere(np.ones(spool.lengths.shape, dtype=bool))
        tile_nonempty = np.ones_like(tile_nonempty)
    if (spool.lengths[tuple(order.T)] < 0).any():
        dtype = np.uint8 if spec.bits_allocated <= 8 else np.uint16
        empty_frame = encode_frame(np.zeros((grid.tile_rows, grid.tile_columns), dtype), spec)

    header.NumberOfFrames = len(order)
    body = Dataset({e.tag: e for e in header if e.tag < _PFFG_TAG})
    body.file_meta = header.file_meta
    late = [e for e in header if e.tag >= _PFFG_TAG]
    if late:
        raise RuntimeError(f"Unexpected attributes after the functional groups: {late}")

    handle, temporary = temporary_beside(destination, ".tmp")
    try:
        with os.fdopen(handle, "wb") as out:
            _write_body(out, body, ahead)
            if not tiled_full:
                if items is None:
                    items = FrameItems(header, grid, hd_options,
                                       spec.segmentation_type == "LABELMAP", tile_nonempty,
                                       spec.n_segments, implicit)
                out.write(element_header(_PFFG_TAG, "SQ", _UNDEFINED, implicit))
                for channel, tile_row, tile_column in order:
                    out.write(items.item(int(channel), int(tile_row), int(tile_column)))
                out.write(struct.pack("<HHI", 0xFFFE, 0xE0DD, 0))
            write_pixel_data(out, spool, order, spec, grid, implicit,
                              use_extended_offset_table, empty_frame)
            out.flush()
            os.fsync(out.fileno())
        in_place = PUTTING_IN_PLACE.get()
        if in_place is not None:
            in_place()
        replace_atomically(temporary, destination, overwrite)
    except BaseException:
        with contextlib.suppress(OSError):  # the write's own error is the one to see
            os.unlink(temporary)
        raise
