"""The frame index of a SEG of a series or multi-frame image: which plane and segment each frame is.

A volume SEG's frames are located by their per-frame functional groups (PS3.3 C.7.6.16.2):
the source image (and frame) each derives from, its plane position, and its segment. A SEG of
thousands of frames would take seconds to index through pydicom's Datasets (one per item and
nested sequence); :func:`scan_frame_items` instead walks the raw bytes of the Per-frame
Functional Groups Sequence once, reading only the few elements it needs (PS3.5 7.1, 7.5).
It relies on no SpatialLocationsPreserved or dimension index, so SEGs of other tools
(dcmqi's, highdicom's) are matched by their source references.
"""

from __future__ import annotations

import dataclasses
import functools
import struct
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, BinaryIO

import numpy as np
from highdicom.spatial import get_plane_sort_index
from pydicom.datadict import dictionary_VR
from pydicom.dataset import Dataset
from pydicom.filereader import read_dataset
from pydicom.multival import MultiValue

from daskseg._frames import LONG_VRS
from daskseg._series import ORIENTATION_TOLERANCE
from daskseg.errors import SegmentationFileError, SegmentationInputError, SegmentationTypeError

__all__ = [
    "FrameItem", "VolumeIndex", "at_frame_items", "frame_items_from_json", "index_volume_frames",
    "read_frame_items", "scan_frame_items", "sortable",
]

_UNDEFINED = 0xFFFFFFFF
_ITEM, _ITEM_END, _SEQUENCE_END = 0xFFFEE000, 0xFFFEE00D, 0xFFFEE0DD
_PFFG = 0x52009230  # Per-frame Functional Groups Sequence
_DERIVATION, _SOURCE_IMAGE = 0x00089124, 0x00082112  # DerivationImage-, SourceImageSequence
_PLANE_POSITION, _SEGMENT_IDENTIFICATION = 0x00209113, 0x0062000A
_SOP_CLASS, _SOP_INSTANCE, _FRAME_NUMBER = 0x00081150, 0x00081155, 0x00081160
_POSITION, _SEGMENT = 0x00200032, 0x0062000B
_PLANE_ORIENTATION, _ORIENTATION = 0x00209116, 0x00200037
_OTHER_SOURCES = -1  # not a tag: where _take_source notes a frame's further source images
# A tiled image's frame: its Plane Position (Slide) (C.8.12.6.1), 1-based SL offsets in the
# total pixel matrix.
_PLANE_POSITION_SLIDE, _COLUMN_POSITION, _ROW_POSITION = 0x0048021A, 0x0048021E, 0x0048021F
_BINARY = frozenset({_SEGMENT, _COLUMN_POSITION, _ROW_POSITION})  # US, SL: no padding to strip
# The sequences holding what is read, and the elements read from each one's items: a frame's
# segment from its Segment Identification (PS3.3 C.8.20.3.1), its position from its Plane
# Position (C.7.6.16.2.3), its source from a Source Image item of its Derivation Image
# (C.7.6.16.2.6). Only there: a Source Image item's Image SOP Instance Reference (Table 10-3)
# may itself name a segment (ReferencedSegmentNumber) of another SEG the frame derives from.
_READ_IN: dict[int, tuple[int, ...]] = {
    _DERIVATION: (),
    _SOURCE_IMAGE: (_SOP_CLASS, _SOP_INSTANCE, _FRAME_NUMBER),
    _PLANE_POSITION: (_POSITION,),
    # Shared by every frame as a rule, a frame's own where a SEG keeps it there (C.7.6.16).
    _PLANE_ORIENTATION: (_ORIENTATION,),
    _SEGMENT_IDENTIFICATION: (_SEGMENT,),
    _PLANE_POSITION_SLIDE: (_COLUMN_POSITION, _ROW_POSITION),
}
# A source item that references a SEG (a refined SEG's earlier one) is not the frame's image.
_SEGMENTATION_CLASSES = frozenset({
    "1.2.840.10008.5.1.4.1.1.66.4",  # Segmentation Storage
    "1.2.840.10008.5.1.4.1.1.66.7",  # Label Map Segmentation Storage
})


# An explicit VR element's header: group, element, VR and a 2-byte length (PS3.5 7.1.2).
_HEADER = struct.Struct("<HH2sH").unpack_from
_LENGTH = struct.Struct("<I").unpack_from


@functools.lru_cache(maxsize=1024)
def _is_sequence(tag: int) -> bool:
    try:
        return dictionary_VR(tag) == "SQ"
    except KeyError:  # private or unknown: a sequence only when its length is undefined
        return False


#: What :meth:`_Walker.element` says of an element's value: not a sequence, a sequence encoded
#: as the data set around it, or a UN of undefined length, whose value is a sequence encoded in
#: Implicit VR Little Endian whatever the data set's transfer syntax (PS3.5 6.2.2), as toolkits
#: write private sequences whose VR they do not know.
_NOT_SEQUENCE, _SEQUENCE, _IMPLICIT_SEQUENCE = 0, 1, 2


class _Walker:
    """Element headers of a little-endian dataset in a buffer (PS3.5 7.1).

    ``implicit`` arguments: whether the elements walked are in Implicit VR (None: as the
    data set, ``self.implicit``); a UN sequence's items are, inside an explicit data set.
    """

    def __init__(self, buffer: bytes, implicit: bool) -> None:
        self.buffer = buffer
        self.implicit = implicit

    def element(self, pos: int, implicit: bool | None = None) -> tuple[int, int, int, int]:
        """(tag, whether a sequence and how encoded, value position, value length) of the
        element at ``pos``."""
        # dcmqi writes undefined lengths, so every element of a SEG's per-frame items passes
        # here (800,000 for 3,777 frames): precompiled structs, one unpack per element.
        buffer = self.buffer
        group, element, vr, short = _HEADER(buffer, pos)
        tag = group << 16 | element
        if group == 0xFFFE or (self.implicit if implicit is None else implicit):
            (length,) = _LENGTH(buffer, pos + 4)
            return tag, int(group != 0xFFFE and (length == _UNDEFINED or _is_sequence(tag))), \
                pos + 8, length
        if vr in LONG_VRS:
            (length,) = _LENGTH(buffer, pos + 8)
            kind = (_SEQUENCE if vr == b"SQ" else
                    _IMPLICIT_SEQUENCE if vr == b"UN" and length == _UNDEFINED else _NOT_SEQUENCE)
            return tag, kind, pos + 12, length
        return tag, _NOT_SEQUENCE, pos + 8, short

    @staticmethod
    def inside(kind: int, implicit: bool | None) -> bool | None:
        """The encoding of the items of a sequence of ``kind`` in a data set of ``implicit``."""
        return True if kind == _IMPLICIT_SEQUENCE else implicit

    def end(self, value: int, length: int, implicit: bool | None = None) -> int:
        """The position after a value; an undefined-length sequence is walked to its end."""
        if length != _UNDEFINED:
            return value + length
        pos = value
        while True:
            tag, _, item_value, item_length = self.element(pos, implicit)
            if tag == _SEQUENCE_END:
                return item_value
            pos = self.end_item(item_value, item_length, implicit)

    def end_item(self, value: int, length: int, implicit: bool | None = None) -> int:
        if length != _UNDEFINED:
            return value + length
        pos = value
        while True:
            tag, kind, element_value, element_length = self.element(pos, implicit)
            if tag == _ITEM_END:
                return element_value
            pos = self.end(element_value, element_length, self.inside(kind, implicit))

    def items(self, value: int, length: int,
              implicit: bool | None = None) -> list[tuple[int, int]]:
        """(start, end) of each item's dataset in a sequence value."""
        spans = []
        pos, stop = value, (None if length == _UNDEFINED else value + length)
        while stop is None or pos < stop:
            tag, _, item_value, item_length = self.element(pos, implicit)
            if tag == _SEQUENCE_END:
                break
            end = self.end_item(item_value, item_length, implicit)
            # An undefined-length item ends after its delimiter (8 bytes).
            spans.append((item_value, end - 8 if item_length == _UNDEFINED else end))
            pos = end
        return spans


@dataclass(frozen=True)
class FrameItem:
    """What a frame's per-frame functional groups say (None where absent)."""

    source_uid: str | None
    source_frame: int | None
    position: tuple[float, float, float] | None
    segment: int | None
    # A tiled image's frame: (row, column) of its first pixel in the total pixel matrix; None
    # without a Plane Position (Slide) of its own, (0, 0) for one without valid positions.
    tile_position: tuple[int, int] | None = None
    orientation: tuple[float, ...] | None = None  # of its own Plane Orientation (Patient)
    # The further images it is derived from, after source_uid (a frame of a PET and a CT
    # slice, say), SEGs left out.
    also_from: tuple[str, ...] = ()


def _signed(raw: bytes | None) -> int | None:
    """An SL value's first number; None when absent or shorter than one (a damaged file)."""
    return None if raw is None or len(raw) < 4 else struct.unpack_from("<i", raw)[0]


def _collect(walker: _Walker, start: int, end: int, found: dict[int, bytes],
             within: int | None = None, implicit: bool | None = None) -> int:
    """Collect the elements read from an item's dataset at ``start`` (an item of the sequence
    ``within``; None: a frame's item); return the position after it (after its delimiter, for
    an item of undefined length: ``end`` need not tell). ``implicit`` as :class:`_Walker`'s."""
    wanted = _READ_IN.get(within, ()) if within is not None else ()
    pos = start
    while pos < end:
        tag, sequence, value, length = walker.element(pos, implicit)
        if tag == _ITEM_END:
            return value
        inside = True if sequence == _IMPLICIT_SEQUENCE else implicit  # see _Walker.inside
        if sequence:
            if tag in _READ_IN:
                found.setdefault(tag, b"")  # the group is there, whatever its items hold
                for item_start, item_end in walker.items(value, length, inside):
                    if tag == _SOURCE_IMAGE:
                        _take_source(walker, item_start, item_end, found, inside)
                    else:
                        _collect(walker, item_start, item_end, found, tag, inside)
        elif tag in wanted and tag not in found:
            raw = walker.buffer[value : value + length]
            # An empty value is absent (a text one may be only padding; US is binary).
            if raw if tag in _BINARY else raw.strip(b"\x00 "):
                found[tag] = raw
        pos = walker.end(value, length, inside) if sequence else value + length
    return pos


def _take_source(walker: _Walker, start: int, end: int, found: dict[int, bytes],
                 implicit: bool | None = None) -> None:
    """The frame's source image and frame number from the first Source Image item that names
    an instance and is not of a SEG; the images of such items after it noted as further ones."""
    reference: dict[int, bytes] = {}
    _collect(walker, start, end, reference, _SOURCE_IMAGE, implicit)
    if _SOP_INSTANCE not in reference:
        return
    if _text(reference.get(_SOP_CLASS)) in _SEGMENTATION_CLASSES:
        return
    if _SOP_INSTANCE in found:  # a further one: its UID alone, as found (never parsed)
        found[_OTHER_SOURCES] = found.get(_OTHER_SOURCES, b"") + b"\\" + reference[_SOP_INSTANCE]
        return
    found[_SOP_INSTANCE] = reference[_SOP_INSTANCE]
    if _FRAME_NUMBER in reference:
        found[_FRAME_NUMBER] = reference[_FRAME_NUMBER]


def _further_sources(noted: bytes | None) -> tuple[str, ...]:
    """The UIDs :func:`_take_source` noted after a frame's own, without repeats or damage (a
    value that is no UID names no image that could be asked for)."""
    if not noted:
        return ()
    uids = (raw.decode("ascii", "replace").strip("\x00 ") for raw in noted.split(b"\\"))
    return tuple(dict.fromkeys(uid for uid in uids if uid))


def _text(raw: bytes | None) -> str | None:
    return None if raw is None else raw.decode("ascii").strip("\x00 ")


def at_frame_items(tag: int, vr: str | None, length: int) -> bool:
    """pydicom's ``stop_when`` for a header read up to its per-frame items (or Pixel Data)."""
    return tag >= _PFFG


def scan_frame_items(buffer: bytes, dataset_start: int, implicit: bool) -> list[FrameItem]:
    """The frame items of the Per-frame Functional Groups Sequence in ``buffer``.

    ``buffer`` holds top-level elements from ``dataset_start`` on, the sequence among them
    (:func:`read_frame_items` gives the sequence alone).
    """
    walker = _Walker(buffer, implicit)
    pos = dataset_start
    while pos < len(buffer):
        tag, sequence, value, length = walker.element(pos)
        if tag == _PFFG:
            break
        if tag > _PFFG:
            return []
        pos = walker.end(value, length, walker.inside(sequence, None)) if sequence else value + length
    else:
        return []
    frames = []
    # One walk over the items: finding each one's end and reading it are the same pass (dcmqi
    # writes undefined lengths, whose ends are found only by walking every element).
    pos, stop = value, (len(buffer) if length == _UNDEFINED else value + length)
    while pos < stop:
        tag, _, item_value, item_length = walker.element(pos)
        if tag == _SEQUENCE_END:
            break
        found: dict[int, bytes] = {}
        if item_length == _UNDEFINED:
            pos = _collect(walker, item_value, len(buffer), found)
        else:
            pos = item_value + item_length
            _collect(walker, item_value, pos, found)
        position = _text(found.get(_POSITION))
        orientation = _text(found.get(_ORIENTATION))
        frame = _text(found.get(_FRAME_NUMBER))
        segment = found.get(_SEGMENT)
        row, column = _signed(found.get(_ROW_POSITION)), _signed(found.get(_COLUMN_POSITION))
        # An empty value is absent: the frame is placed by what else it says, as from the
        # DICOM JSON of a server (where an empty element has no Value).
        frames.append(FrameItem(
            source_uid=_text(found.get(_SOP_INSTANCE)) or None,
            source_frame=int(frame.split("\\")[0]) if frame else None,
            position=tuple(float(v) for v in position.split("\\")) if position else None,  # type: ignore[arg-type]
            segment=struct.unpack("<H", segment[:2])[0] if segment else None,
            tile_position=(None if _PLANE_POSITION_SLIDE not in found
                           else (0, 0) if row is None or column is None else (row, column)),
            orientation=(tuple(float(v) for v in orientation.split("\\")) if orientation
                         else None),
            also_from=_further_sources(found.get(_OTHER_SOURCES)),
        ))
    return frames


# The same elements by their DICOM JSON keys (PS3.18 F.2), for a SEG on a DICOMweb server.
_JSON_PFFG = "52009230"
_JSON_READ_IN = {f"{sequence:08X}": {f"{tag:08X}" for tag in tags}
                 for sequence, tags in _READ_IN.items()}
_JSON_SOURCE_IMAGE = f"{_SOURCE_IMAGE:08X}"
_JSON_SOP_CLASS, _JSON_SOP_INSTANCE, _JSON_FRAME_NUMBER, _JSON_POSITION, _JSON_SEGMENT = (
    f"{tag:08X}" for tag in (_SOP_CLASS, _SOP_INSTANCE, _FRAME_NUMBER, _POSITION, _SEGMENT)
)
_JSON_ORIENTATION = f"{_ORIENTATION:08X}"
_JSON_OTHER_SOURCES = "further"  # not a key of DICOM JSON: as _OTHER_SOURCES


def _collect_json(item: dict[str, Any], found: dict[str, list[Any]],
                  within: str | None = None) -> None:
    # In tag order, the first of each element where _collect reads it in a file.
    wanted = _JSON_READ_IN.get(within, set()) if within is not None else set()
    for key in sorted(item, key=str.upper):
        tag, element = key.upper(), item[key]
        values = element.get("Value") or []
        if tag in _JSON_READ_IN:
            for nested in values:
                if tag != _JSON_SOURCE_IMAGE:
                    _collect_json(nested, found, tag)
                    continue
                reference: dict[str, list[Any]] = {}
                _collect_json(nested, reference, tag)
                uid = reference.get(_JSON_SOP_INSTANCE)
                sop_class = reference.get(_JSON_SOP_CLASS)
                if uid is not None and (
                        sop_class is None or str(sop_class[0]).strip() not in _SEGMENTATION_CLASSES):
                    if _JSON_SOP_INSTANCE in found:
                        found.setdefault(_JSON_OTHER_SOURCES, []).append(str(uid[0]).strip())
                        continue
                    found[_JSON_SOP_INSTANCE] = uid
                    if _JSON_FRAME_NUMBER in reference:
                        found[_JSON_FRAME_NUMBER] = reference[_JSON_FRAME_NUMBER]
        elif tag in wanted:
            # An empty value (no Value, or null) is absent, as an empty one in a file.
            if values and values[0] not in (None, "") and tag not in found:
                found[tag] = values


def frame_items_from_json(metadata: dict[str, Any]) -> list[FrameItem]:
    """The frame items of the Per-frame Functional Groups Sequence of an instance's DICOM JSON
    metadata (PS3.18 F.2), read as :func:`scan_frame_items` reads them from a file: without
    making a pydicom Dataset of every item. DS and IS values may be numbers or strings."""
    element = metadata.get(_JSON_PFFG) or {}
    frames = []
    for item in element.get("Value") or []:
        found: dict[str, list[Any]] = {}
        _collect_json(item, found)
        uid = found.get(_JSON_SOP_INSTANCE)
        frame = found.get(_JSON_FRAME_NUMBER)
        position = found.get(_JSON_POSITION)
        orientation = found.get(_JSON_ORIENTATION)
        segment = found.get(_JSON_SEGMENT)
        frames.append(FrameItem(
            source_uid=None if uid is None else str(uid[0]).strip(),
            source_frame=None if frame is None else int(frame[0]),
            position=None if position is None else tuple(float(v) for v in position),  # type: ignore[arg-type]
            segment=None if segment is None else int(segment[0]),
            orientation=None if orientation is None else tuple(float(v) for v in orientation),
            also_from=tuple(dict.fromkeys(uid for uid in found.get(_JSON_OTHER_SOURCES, [])
                                          if uid)),
        ))
    return frames


def read_frame_items(handle: BinaryIO, header: Dataset, implicit: bool) -> bytes:
    """The raw bytes of the Per-frame Functional Groups Sequence at the handle's position.

    Reads on to the Pixel Data element and leaves the handle there; the elements between
    (the Extended Offset Table) are read into ``header``. Empty bytes if there are no items.
    """
    start = handle.tell()
    size = 1 << 20
    buffer = handle.read(size)
    walker = _Walker(buffer, implicit)
    while True:
        try:
            tag, sequence, value, length = walker.element(0)
            end = walker.end(value, length) if tag == _PFFG else 0
            if end > len(buffer):
                raise struct.error("beyond the buffer")
            break
        except struct.error:
            more = handle.read(size)
            if not more:
                raise SegmentationFileError(
                    "The per-frame functional groups run past the end of the file: it is "
                    "truncated or its header is damaged."
                ) from None
            buffer += more
            size *= 2
            walker = _Walker(buffer, implicit)
    handle.seek(start + end)
    rest = read_dataset(handle, implicit, True, stop_when=lambda t, vr, n: t >= 0x7FE00010)
    header.update(rest)
    return buffer[:end]


@dataclass(frozen=True)
class VolumeIndex:
    """The planes of a volume SEG and, per channel and plane, its frame (-1: omitted)."""

    # (source SOP Instance UID, source frame number or 0); ("", 0) for a plane known only by
    # its position (frames that reference no source image)
    keys: list[tuple[str, int]]
    positions: np.ndarray  # (planes, 3), NaN where no frame tells
    table: np.ndarray  # (channels, planes) of 0-based frame indices
    # The planes' ImageOrientationPatient: shared, or every frame's own when they agree; None
    # when neither (the planes have no one normal to be sorted along).
    orientation: tuple[float, ...] | None = None
    # Images that frames are derived from besides their planes' own: the plane they are of.
    aliases: dict[str, int] = dataclasses.field(default_factory=dict)


def referenced_instances(header: Dataset) -> set[str]:
    """The SOP instance UIDs of the source images the SEG's header lists (its
    ReferencedSeriesSequence and SourceImageSequence)."""
    referenced = {str(item.ReferencedSOPInstanceUID)
                  for series in header.get("ReferencedSeriesSequence", [])
                  for item in series.get("ReferencedInstanceSequence", [])
                  if "ReferencedSOPInstanceUID" in item}
    referenced |= {str(item.ReferencedSOPInstanceUID)
                   for item in header.get("SourceImageSequence", [])
                   if "ReferencedSOPInstanceUID" in item}
    return referenced


def index_volume_frames(
    header: Dataset, frames: list[FrameItem], segment_numbers: list[int],
) -> VolumeIndex:
    """Planes (one per source image or frame referenced by a frame), and each frame's place."""
    labelmap = header.SegmentationType == "LABELMAP"
    n_channels = 1 if labelmap else len(segment_numbers)
    shared = header.SharedFunctionalGroupsSequence[0]
    shared_segment = None
    if "SegmentIdentificationSequence" in shared:
        shared_segment = int(shared.SegmentIdentificationSequence[0].ReferencedSegmentNumber)
    shared_position = None
    if "PlanePositionSequence" in shared:
        shared_position = tuple(float(v) for v in shared.PlanePositionSequence[0].ImagePositionPatient)
    if shared_position is not None and len(shared_position) != 3:
        raise SegmentationInputError(
            f"The shared ImagePositionPatient has {len(shared_position)} values, not 3 "
            "(x, y, z; PS3.3 C.7.6.2.1.1)."
        )
    frames = _with_shared_source(frames, shared, shared_position)
    # The sources the header lists (dcmqi lists only those with frames): a frame's reference
    # to another image is damage, not a plane of its own (highdicom fails on it).
    referenced = referenced_instances(header)
    channel_of = {number: k for k, number in enumerate(segment_numbers)}
    plane_of: dict[tuple[str, int], int] = {}
    positions: list[tuple[float, float, float] | None] = []
    cells: list[tuple[int, int, int]] = []
    keys: list[tuple[str, int]] = []
    # Frames that reference no source image (dcmqi leaves the derivation empty where it found
    # none) are placed by their position: at a plane of a source image there, or their own.
    at_position: dict[tuple[float, ...], int] = {}
    unplaced: list[int] = []
    also_at: dict[str, set[int]] = {}  # the planes of frames derived from an image besides
    for index, frame in enumerate(frames):
        position: Any = frame.position or shared_position
        if position is not None and len(position) != 3:
            raise SegmentationInputError(
                f"Frame {index + 1}'s ImagePositionPatient has {len(position)} values, not 3 "
                "(x, y, z; PS3.3 C.7.6.2.1.1)."
            )
        if frame.source_uid is not None and referenced and frame.source_uid not in referenced:
            raise SegmentationInputError(
                f"Frame {index + 1} is derived from the image {frame.source_uid}, which the SEG "
                "does not list among its sources (ReferencedSeriesSequence, "
                "SourceImageSequence): the reference is damaged."
            )
        if frame.source_uid is None:
            if position is None:
                raise SegmentationInputError(
                    f"Frame {index + 1} references no source image and has no plane position: "
                    "daskseg cannot place it."
                )
            unplaced.append(index)
            continue
        key = (frame.source_uid, frame.source_frame or 0)
        plane = plane_of.setdefault(key, len(plane_of))
        if plane == len(positions):
            positions.append(position)
            keys.append(key)
            if position is not None and _plane_at(at_position, positions, position) < 0:
                at_position[_rounded(position)] = plane
        cells.append((_channel(frame, index, labelmap, shared_segment, channel_of), plane, index))
        for uid in frame.also_from:
            also_at.setdefault(uid, set()).add(plane)
    for index in unplaced:
        frame = frames[index]
        position = frame.position or shared_position
        plane = _plane_at(at_position, positions, position)
        if plane < 0:
            plane = at_position[_rounded(position)] = len(positions)
            positions.append(position)
            keys.append(("", 0))
        cells.append((_channel(frame, index, labelmap, shared_segment, channel_of), plane, index))
    table = np.full((n_channels, len(positions)), -1, dtype=np.int64)
    for channel, plane, index in cells:
        if table[channel, plane] >= 0:
            raise SegmentationInputError(
                f"Frames {table[channel, plane] + 1} and {index + 1} both hold the same segment "
                "of the same source image: daskseg cannot tell which to read."
            )
        table[channel, plane] = index
    array = np.array([p if p is not None else (np.nan,) * 3 for p in positions], dtype=float)
    # An image that frames are derived from besides their own finds their plane when asked for
    # (highdicom finds a frame by any of its source images), if it is of one plane and of no
    # plane's own (an image of frames of several planes finds none, where highdicom's finds
    # them all).
    own = {uid for uid, _ in keys}
    aliases = {uid: next(iter(planes)) for uid, planes in also_at.items()
               if len(planes) == 1 and uid not in own}
    return VolumeIndex(keys, array.reshape(-1, 3), table, _planes_orientation(shared, frames),
                       aliases)


def _planes_orientation(shared: Dataset, frames: list[FrameItem]) -> tuple[float, ...] | None:
    """The SEG's one plane orientation: shared (as SEGs keep it, and highdicom writes it), or
    the frames' own when every frame has the same 6 values (within the tolerance a series'
    images are matched with); None otherwise. A shared value that is not 6 numbers is damage."""
    items = shared.get("PlaneOrientationSequence") or []
    if items and "ImageOrientationPatient" in items[0]:
        try:
            orientation = tuple(float(v) for v in items[0].ImageOrientationPatient)
        except (TypeError, ValueError) as error:
            raise SegmentationInputError(
                f"The shared ImageOrientationPatient is not numbers ({error})."
            ) from None
        if len(orientation) != 6:
            raise SegmentationInputError(
                f"The shared ImageOrientationPatient has {len(orientation)} values, not 6 "
                "(PS3.3 C.7.6.2.1.1)."
            )
        return orientation
    own = [frame.orientation for frame in frames]
    first = own[0] if own else None
    if first is None or len(first) != 6 or not all(
        value is not None and len(value) == 6
        and np.allclose(value, first, rtol=0, atol=ORIENTATION_TOLERANCE)
        for value in own
    ):
        return None
    return first


def _with_shared_source(frames: list[FrameItem], shared: Dataset,
                        shared_position: tuple[float, ...] | None) -> list[FrameItem]:
    """``frames``, those without a source of their own given the one of the shared functional
    groups (which apply to every frame, PS3.3 C.7.6.16), when that names one image (or frame)
    and those frames lie in one plane: a SEG of one image may share its Derivation Image.

    Shared items naming several images (a whole series, say) tell no frame's own; nor does one
    image for frames in several planes. Those frames are placed by position, as before.
    """
    sources = {
        (str(item.ReferencedSOPInstanceUID), _first_number(item.get("ReferencedFrameNumber")))
        for derivation in shared.get("DerivationImageSequence", [])
        for item in derivation.get("SourceImageSequence", [])
        if item.get("ReferencedSOPInstanceUID")
        and str(item.get("ReferencedSOPClassUID", "")) not in _SEGMENTATION_CLASSES
    }
    if len(sources) != 1:
        return frames
    planes = {_rounded(position) for frame in frames if frame.source_uid is None
              for position in [frame.position or shared_position] if position is not None}
    if len(planes) > 1:
        return frames
    ((uid, number),) = sources
    return [frame if frame.source_uid is not None
            else dataclasses.replace(frame, source_uid=uid, source_frame=number or None)
            for frame in frames]


def _first_number(value: Any) -> int:
    """The first of an IS element's values as an int (0 when absent), as scan_frame_items
    reads a frame's ReferencedFrameNumber."""
    if isinstance(value, MultiValue):
        value = value[0] if len(value) else None
    return 0 if value in (None, "") else int(value)


def _rounded(position: Any) -> tuple[float, ...]:
    """A position as a key, to the micrometre."""
    return tuple(round(float(v), 3) for v in position)


# The 26 keys around a position's own (which _plane_at looks up first).
_NEIGHBOURS = [(a, b, c) for a in (-1, 0, 1) for b in (-1, 0, 1) for c in (-1, 0, 1)
               if (a, b, c) != (0, 0, 0)]


def _plane_at(at_position: dict[tuple[float, ...], int], positions: list[Any],
              position: Any) -> int:
    """The plane within a micrometre of ``position`` in each coordinate (DS values of one
    position agree that far), or -1.

    Positions a hair apart can round to neighbouring keys (-47.5005 and -47.50049999): the
    keys around this one are looked at too, and the planes' own positions compared.
    """
    key = _rounded(position)

    def close(plane: int) -> bool:
        return all(abs(float(a) - float(b)) <= 1e-3 + 1e-9
                   for a, b in zip(positions[plane], position))

    plane = at_position.get(key, -1)
    if plane >= 0 and close(plane):  # most frames: their plane's own key
        return plane
    for step in _NEIGHBOURS:
        plane = at_position.get(tuple(round(k + 0.001 * d, 3) for k, d in zip(key, step)), -1)
        if plane >= 0 and close(plane):
            return plane
    return -1


def _channel(frame: FrameItem, index: int, labelmap: bool, shared_segment: int | None,
             channel_of: dict[int, int]) -> int:
    if labelmap:
        return 0
    number = frame.segment if frame.segment is not None else shared_segment
    if number is None or number not in channel_of:
        raise SegmentationInputError(
            f"Frame {index + 1} names segment {number}, which the SEG does not describe."
        )
    return channel_of[number]


def multiframe_sources(index: VolumeIndex) -> set[str]:
    """The images whose frames the SEG's frames reference by number (PS3.3 C.7.6.1.1.3)."""
    return {uid for uid, frame in index.keys if uid and frame}


def sortable(index: VolumeIndex) -> bool:
    """Whether the planes can be sorted along one normal: each has a position, and the frames
    one orientation."""
    return index.orientation is not None and not np.isnan(index.positions).any()


def plane_order(
    header: Dataset, index: VolumeIndex, source_sop_instance_uids: Sequence[str] | None,
    source_frame_numbers: Sequence[int] | None = None,
) -> list[int]:
    """Output plane -> plane of ``index`` (-1: a referenced source without frames, zeros).

    By default every plane with a frame, sorted along the slice normal as highdicom sorts
    volumes (in the order of their first frames when they cannot be: see :func:`sortable`);
    else the source images given, or (a SEG of one multi-frame image) the frames of
    it given, in their order.
    """
    multiframe = multiframe_sources(index)
    if source_frame_numbers is not None:
        if source_sop_instance_uids is not None:
            raise SegmentationInputError(
                "Give source_sop_instance_uids (a SEG of single-frame images) or "
                "source_frame_numbers (a SEG of one multi-frame image), not both."
            )
        return _frame_order(index, multiframe, source_frame_numbers)
    if source_sop_instance_uids is None:
        if len(index.keys) < 2 or not sortable(index):
            # Planes without positions, or of no one orientation (a SEG of a scout's three
            # planes): in the order of their first frames (the reader says so when opened).
            return list(range(len(index.keys)))
        order = get_plane_sort_index(index.positions.tolist(), list(index.orientation or ()))
        return [int(k) for k in order]
    if isinstance(source_sop_instance_uids, str):
        raise SegmentationInputError(
            "source_sop_instance_uids is a sequence of UIDs, not one string."
        )
    # Any iterable of UIDs, as highdicom takes: a list, a numpy or pandas array, a generator
    # (read once, here).
    try:
        source_sop_instance_uids = [str(uid) for uid in source_sop_instance_uids]
    except TypeError as error:
        raise SegmentationTypeError(
            "source_sop_instance_uids must be a sequence of UIDs, not "
            f"{type(source_sop_instance_uids).__name__}."
        ) from error
    if multiframe:
        raise SegmentationInputError(
            "The SEG's frames reference frames of a multi-frame image: choose its planes with "
            "source_frame_numbers (1-based frame numbers of that image), not "
            "source_sop_instance_uids."
        )
    plane_of = {**index.aliases,
                **{uid: plane for plane, (uid, _) in enumerate(index.keys) if uid}}
    referenced = referenced_instances(header)
    # Source images that the SEG does not reference read as zeros (as highdicom's with
    # assert_missing_frames_are_empty=True: dcmqi references only the images with frames), but
    # UIDs of which none is the SEG's are another series.
    if source_sop_instance_uids and not any(
        uid in plane_of or uid in referenced for uid in source_sop_instance_uids
    ):
        raise SegmentationInputError(
            "None of source_sop_instance_uids is a source image of this SEG (first: "
            f"{source_sop_instance_uids[0]}): are they of another series?"
        )
    unplaced = sum(1 for uid, _ in index.keys if not uid)
    if unplaced:
        # A plane of frames that reference no image has no UID to be asked for by.
        warnings.warn(
            f"{unplaced} of the SEG's planes {'holds' if unplaced == 1 else 'hold'} only frames "
            "that reference no source image "
            "(dcmqi leaves such references out), so reading by source_sop_instance_uids leaves "
            "them out. Read without it (the SEG's planes by position), or decode to NIfTI with "
            "the series (--source), which places them by position.",
            UserWarning, stacklevel=4,
        )
    return [plane_of.get(uid, -1) for uid in source_sop_instance_uids]


def _frame_order(index: VolumeIndex, multiframe: set[str],
                 source_frame_numbers: Sequence[int]) -> list[int]:
    """Planes of the frames given of the one multi-frame source image (as highdicom's
    ``get_pixels_by_source_frame``; frames without SEG frames: -1, zeros)."""
    if not multiframe:
        raise SegmentationInputError(
            "source_frame_numbers is for a SEG of one multi-frame image; this SEG's frames "
            "reference single-frame images: choose its planes with source_sop_instance_uids."
        )
    if len(multiframe) > 1:
        raise SegmentationInputError(
            f"The SEG's frames reference frames of {len(multiframe)} multi-frame images, so "
            "source_frame_numbers is ambiguous; read it in plane order or use highdicom's "
            "get_pixels_by_source_frame."
        )
    if isinstance(source_frame_numbers, (str, bytes)) or not hasattr(
        source_frame_numbers, "__iter__"
    ):
        raise SegmentationInputError(
            "source_frame_numbers is a sequence of frame numbers (1-based), not "
            f"{type(source_frame_numbers).__name__}."
        )
    numbers = list(source_frame_numbers)
    for number in numbers:
        # highdicom: "Frame numbers are 1-based indices and must be > 0."
        if isinstance(number, bool) or not isinstance(number, (int, np.integer)) or number < 1:
            raise SegmentationInputError(
                f"source_frame_numbers holds {number!r}: frame numbers are 1-based integers "
                "(PS3.3 C.7.6.1.1.3), so each must be 1 or more."
            )
    plane_of = {frame: plane for plane, (uid, frame) in enumerate(index.keys) if uid and frame}
    return [plane_of.get(int(number), -1) for number in numbers]
