"""The SEG's header: built by highdicom on a one-tile proxy, and the per-frame items by hand.

highdicom's own ``Segmentation`` class builds every module (patient, study, specimen,
SegmentSequence, dimensions, shared functional groups, derivation references) on a *proxy*: the
same source, segments and options, but a total pixel matrix of one tile, so it never sees the
mask. The per-frame functional groups of a TILED_SPARSE SEG are written here element by element
(:class:`FrameItems`), equal to highdicom's, without holding a Dataset per frame.
"""

from __future__ import annotations

import contextlib
import functools
import struct
from collections.abc import Iterator, Sequence
from typing import Any

import highdicom as hd
import numpy as np
from highdicom.spatial import PixelToReferenceTransformer
from pydicom.dataelem import RawDataElement
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.filebase import DicomBytesIO
from pydicom.filewriter import write_dataset
from pydicom.uid import UID, ExplicitVRLittleEndian
from pydicom.multival import MultiValue
from pydicom.valuerep import DS, EXPLICIT_VR_LENGTH_32

from daskseg.errors import SegmentationInputError
from daskseg.plan import TileGrid, spatial_index_values

__all__ = [
    "FrameItems", "bits_allocated", "check_bits_allocated", "check_header_keywords",
    "described_numbers",
    "element_header", "encoded_elements", "finish_header", "highdicom_refusals",
    "encoded_items", "frame_content_part",
    "header_from", "item", "proxy_header", "proxy_pixels", "segment_parts", "segmentation_header",
    "serialize",
]


def proxy_header(
    source: Dataset,
    stacked: bool,
    dtype: np.dtype,
    tile: tuple[int, int],
    hd_options: dict[str, Any],
) -> Dataset:
    """The SEG header that highdicom builds for a one-tile total pixel matrix."""
    # A new dict of the same elements (not a copy of the Dataset, whose elements would be shared
    # and changed in the caller's source), with its own total pixel matrix size.
    size_tags = (0x00480006, 0x00480007)  # TotalPixelMatrixColumns, TotalPixelMatrixRows
    proxy_source = Dataset({tag: elem for tag, elem in source.items() if tag not in size_tags})
    proxy_source.TotalPixelMatrixRows, proxy_source.TotalPixelMatrixColumns = tile
    proxy = proxy_pixels((1, *tile), stacked, dtype, described_numbers(hd_options))
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
    return header_from(seg, hd_options["transfer_syntax_uid"])


def proxy_pixels(
    shape: tuple[int, ...], stacked: bool, dtype: np.dtype, numbers: Sequence[int]
) -> np.ndarray:
    """A proxy mask of ``shape`` (plus the segment axis when stacked) for highdicom.

    One non-zero pixel per segment, on different pixels: every segment present, none
    overlapping, so highdicom takes the same branches as for the real mask. A label image's
    values are the segment ``numbers``.
    """
    values = list(numbers)
    n_segments = len(values)
    full = (*shape, n_segments) if stacked else shape
    # highdicom branches on the kind of values (bool, unsigned, float), and takes no signed or
    # wide integers: those map to the unsigned type that holds every segment number.
    if dtype.kind in "iu":
        dtype = np.dtype(np.uint8 if values[-1] < 256 else np.uint16)
    elif dtype.kind == "f":  # nor half, extended or big-endian floats; the values are the same
        dtype = np.dtype(np.float32)
    proxy = np.zeros(full, dtype=dtype)
    flat = proxy.reshape(-1, n_segments) if stacked else proxy.reshape(-1)
    for index in range(min(n_segments, flat.shape[0])):
        if stacked:
            flat[index, index] = 1
        elif dtype.kind != "b":
            flat[index] = values[index]
        elif values[index] == 1:
            # True is label 1 (highdicom's): a boolean label mask of other segments can only
            # be empty, which highdicom takes; stored as True, it would be label 1, undescribed.
            flat[index] = True
    return proxy


@contextlib.contextmanager
def highdicom_refusals() -> Iterator[None]:
    """highdicom's refusal to make the SEG's header, as a SegmentationInputError."""
    try:
        yield
    except (ValueError, TypeError) as error:
        raise SegmentationInputError(f"highdicom refused the SEG's header: {error}") from error
    except (AttributeError, KeyError, IndexError) as error:
        # highdicom reads what it needs of the source without checking it is there.
        raise SegmentationInputError(
            "highdicom could not make the SEG's header from the source image(s): "
            f"{type(error).__name__}: {error}. An attribute that it needs is missing or empty "
            "in them (SliceThickness, PixelSpacing, or a functional group of each frame)."
        ) from error


def described_numbers(hd_options: dict[str, Any]) -> list[int]:
    """The segment numbers of highdicom's options' segment descriptions, in order."""
    return [int(item.SegmentNumber) for item in hd_options["segment_descriptions"]]


def header_from(seg: hd.seg.Segmentation, transfer_syntax_uid: str) -> Dataset:
    """A proxy SEG's header without its frames: pixel data and per-frame items are written here."""
    header = Dataset()
    header.update(seg)
    header.file_meta = FileMetaDataset(seg.file_meta)
    header.file_meta.TransferSyntaxUID = UID(transfer_syntax_uid)
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


def element_header(tag: int, vr: str, length: int, implicit: bool) -> bytes:
    """The tag, VR and length of a data element, little endian (PS3.5 7.1)."""
    group, element = tag >> 16, tag & 0xFFFF
    if implicit:
        return struct.pack("<HHI", group, element, length)
    if vr in EXPLICIT_VR_LENGTH_32:  # PS3.5 Table 7.1-1: a reserved field and 32-bit length
        return struct.pack("<HH2sHI", group, element, vr.encode(), 0, length)
    return struct.pack("<HH2sH", group, element, vr.encode(), length)


def serialize(dataset: Dataset, implicit: bool) -> bytes:
    """The encoded elements of a dataset (no item header), little endian, as pydicom's
    ``write_dataset`` writes them (:func:`encoded_elements`, else pydicom itself)."""
    encoded = encoded_elements(dataset, implicit)
    if encoded is not None:
        return encoded
    buffer = DicomBytesIO()
    buffer.is_little_endian = True
    buffer.is_implicit_VR = implicit
    write_dataset(buffer, dataset)
    return buffer.getvalue()


# The VRs encoded_elements writes itself: strings written as pydicom's write_string or
# write_text (for ASCII text both give the same bytes, in every character set pydicom maps),
# numbers as write_numbers, number strings as write_number_string.
_STRING_VRS = frozenset({"AE", "AS", "CS", "UI", "UR", "LO", "LT", "SH", "ST", "UC", "UT",
                         "DA", "DT", "TM"})
_NUMBER_FORMATS = {"US": "H", "UL": "L", "SS": "h", "SL": "l", "FL": "f", "FD": "d",
                   "SV": "q", "UV": "Q"}


class _NotPlain(Exception):
    """An element that encoded_elements leaves to pydicom."""


def encoded_elements(dataset: Dataset, implicit: bool) -> bytes | None:
    """The encoded elements of a dataset of plain values, as pydicom writes them; else None.

    Plain: ASCII strings and number strings, numbers, and sequences of such items of defined
    length. pydicom spends about 15 us an element in its general machinery (each new item's
    ambiguous VRs resolved, each element's character sets converted and value buffered), which
    plain items do not need: the 117 segments and 300 source references of a CT series'
    header took 75 ms a write, 9 ms here. Anything else (raw elements, person names, bytes,
    tags, ambiguous VRs, non-ASCII text, dates as objects, numbers out of range) returns None,
    for pydicom.
    """
    try:
        return b"".join(_encoded(dataset, implicit))
    except _NotPlain:
        return None


def encoded_items(items: Any, implicit: bool) -> bytes | None:
    """A sequence's items (item tags, defined lengths), as pydicom's ``write_sequence``
    writes them; None when an item is not plain (see :func:`encoded_elements`)."""
    try:
        return b"".join(_encoded_item(dataset, implicit) for dataset in items)
    except _NotPlain:
        return None


def _encoded_item(dataset: Dataset, implicit: bool) -> bytes:
    if getattr(dataset, "is_undefined_length_sequence_item", False):
        raise _NotPlain
    return item(b"".join(_encoded(dataset, implicit)))


def _encoded(dataset: Dataset, implicit: bool) -> Iterator[bytes]:
    elements = dataset._dict  # get_item would parse raw elements, which are not plain
    for tag in sorted(elements):
        if tag.element == 0 and tag.group > 6:  # group lengths are not written (PS3.5 7.2)
            continue
        element = elements[tag]
        if isinstance(element, RawDataElement):
            raise _NotPlain
        vr = element.VR
        if vr == "SQ" and element.is_undefined_length:
            raise _NotPlain
        value = _encoded_value(element, vr, implicit)
        if not implicit and vr not in EXPLICIT_VR_LENGTH_32 and len(value) > 0xFFFF:
            raise _NotPlain  # pydicom writes it as UN, with a warning
        yield element_header(int(tag), vr, len(value), implicit) + value


def _encoded_value(element: Any, vr: str, implicit: bool) -> bytes:
    value = element.value
    if vr == "SQ":
        return b"".join(_encoded_item(dataset, implicit) for dataset in value)
    if value is None or (isinstance(value, str | list | tuple | MultiValue) and len(value) == 0):
        return b""
    if isinstance(value, np.ndarray):
        raise _NotPlain
    multiple = isinstance(value, list | tuple | MultiValue)
    if vr in _STRING_VRS:
        values = value if multiple else [value]
        if not all(isinstance(text, str) and text.isascii() for text in values):
            raise _NotPlain
        data = "\\".join(values).encode("ascii")
        return data + (b"\0" if vr == "UI" else b" ") * (len(data) % 2)
    if vr in ("DS", "IS"):
        return _number_string(value if multiple else [value])
    if vr in _NUMBER_FORMATS:
        values = value if multiple else [value]
        try:
            return struct.pack(f"<{len(values)}{_NUMBER_FORMATS[vr]}", *values)
        except struct.error:  # out of range, or not a number: pydicom says what is wrong
            raise _NotPlain from None
    raise _NotPlain


def _number_string(numbers: Any) -> bytes:
    """The value of a DS or IS element, as pydicom's ``write_number_string`` writes it: each
    number's original string where it has one, padded to even length with a space (PS3.5 6.2)."""
    data = "\\".join(number.original_string if hasattr(number, "original_string")
                      else str(number) for number in numbers).encode("ascii")
    return data + b" " * (len(data) % 2)


def item(body: bytes) -> bytes:
    """An item of a sequence of defined length (PS3.5 7.5)."""
    return struct.pack("<HHI", 0xFFFE, 0xE000, len(body)) + body


def segment_parts(n_segments: int, labelmap: bool, implicit: bool) -> list[bytes]:
    """Each segment's encoded SegmentIdentificationSequence of its frames' items.

    Empty for a LABELMAP (no segment per frame) and for one segment, which highdicom puts in
    the shared functional groups.
    """
    parts = [b""] * n_segments
    if not labelmap and n_segments > 1:
        for channel in range(n_segments):
            identification = Dataset()
            identification.add_new(0x0062000B, "US", channel + 1)  # ReferencedSegmentNumber
            part = Dataset()
            part.add_new(0x0062000A, "SQ", [identification])  # SegmentIdentificationSequence
            parts[channel] = serialize(part, implicit)
    return parts


def ds_element(tag: int, values: Any, implicit: bool) -> bytes:
    """An encoded DS element of ``values``, as highdicom makes them (each value a
    ``DS(value, auto_format=True)``: at most 16 characters) and pydicom writes them."""
    data = _number_string([DS(value, auto_format=True) for value in values])
    return element_header(tag, "DS", len(data), implicit) + data


def slide_position_part(image_position: Any, pixel_matrix_position: tuple[int, int],
                        implicit: bool, ds_parts: dict[tuple[int, Any], bytes] | None = None,
                        ) -> bytes:
    """The encoded PlanePositionSlideSequence of a tile's frame, as highdicom's
    ``PlanePositionSequence`` (SLIDE) and pydicom write it, built directly: through pydicom it
    took a quarter of a millisecond a tile, a quarter of a second at the end of every
    TILED_SPARSE write of a 16384² slide. ``ds_parts`` keeps each offset's encoded element
    for the next tile: a slide's tiles share a few offsets (one per row or column of tiles
    unless the slide is rotated), and formatting a DS is most of the cost."""
    column, row = pixel_matrix_position
    ds_parts = {} if ds_parts is None else ds_parts

    def offset(tag: int, value: Any) -> bytes:
        part = ds_parts.get((tag, value))
        if part is None:
            part = ds_parts[(tag, value)] = ds_element(tag, [value], implicit)
        return part

    body = (
        offset(0x0040072A, image_position[0])  # XOffsetInSlideCoordinateSystem
        + offset(0x0040073A, image_position[1])  # YOffsetInSlideCoordinateSystem
        + offset(0x0040074A, image_position[2])  # ZOffsetInSlideCoordinateSystem
        + element_header(0x0048021E, "SL", 4, implicit) + struct.pack("<i", int(column))
        + element_header(0x0048021F, "SL", 4, implicit) + struct.pack("<i", int(row))
    )
    sequence = item(body)
    return element_header(0x0048021A, "SQ", len(sequence), implicit) + sequence


def frame_content_part(index_values: tuple[int, ...], implicit: bool) -> bytes:
    """The encoded FrameContentSequence of one frame: its DimensionIndexValues."""
    values = struct.pack(f"<{len(index_values)}I", *index_values)
    content = item(element_header(0x00209157, "UL", len(values), implicit) + values)
    return element_header(0x00209111, "SQ", len(content), implicit) + content


def tile_positions(grid: TileGrid, image_position: Any, orientation: Any,
                   spacing: Any) -> tuple[np.ndarray, np.ndarray]:
    """Every tile's 1-based (column, row) offset and position in the slide's frame of reference.

    The values of highdicom's ``compute_tile_positions_per_frame``, computed as it computes them
    (one product of all tiles' indices with the same affine: a product of fewer tiles can differ
    in the last bit), but kept as two arrays: its list of Python lists per tile held 350 MB and
    took seconds for a slide of a million tiles.
    """
    tile_indices = np.stack(
        np.meshgrid(range(grid.n_tile_columns), range(grid.n_tile_rows), indexing="xy")
    ).reshape(2, -1).T
    pixel_indices = tile_indices * [grid.tile_columns, grid.tile_rows]
    transformer = PixelToReferenceTransformer(
        image_position=image_position, image_orientation=orientation, pixel_spacing=spacing)
    return pixel_indices + 1, transformer(pixel_indices)


class FrameItems:
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
        self._pixel_offsets, self._coordinates = tile_positions(
            grid, image_position, header.ImageOrientationSlide, spacing)
        self._n_tile_columns = grid.n_tile_columns
        self._row_index, self._column_index = spatial_index_values(tile_nonempty)
        self._labelmap = labelmap
        self._implicit = implicit
        self._position_parts: dict[int, bytes] = {}
        self._offset_parts: dict[tuple[int, Any], bytes] = {}

        # Type 2: tiles of a total pixel matrix have no one source frame (as highdicom).
        derivation = Dataset()
        derivation.add_new(0x00089124, "SQ", [])  # DerivationImageSequence
        self._derivation_part = serialize(derivation, implicit)
        self._segment_parts = segment_parts(n_segments, labelmap, implicit)

    def _position_part(self, tile: int) -> bytes:
        part = self._position_parts.get(tile)
        if part is None:
            column_position, row_position = self._pixel_offsets[tile].tolist()
            part = self._position_parts[tile] = slide_position_part(
                self._coordinates[tile].tolist(), (column_position, row_position), self._implicit,
                self._offset_parts,
            )
        return part

    def item(self, channel: int, tile_row: int, tile_column: int) -> bytes:
        """The encoded item of one frame."""
        spatial = (int(self._row_index[tile_row]), int(self._column_index[tile_column]))
        index_values = spatial if self._labelmap else (channel + 1, *spatial)
        frame_content = frame_content_part(index_values, self._implicit)
        tile = tile_row * self._n_tile_columns + tile_column
        # Elements in tag order: (0008,9124), (0020,9111), (0048,021A), (0062,000A).
        return item(
            self._derivation_part
            + frame_content
            + self._position_part(tile)
            + self._segment_parts[channel if not self._labelmap else 0]
        )


def bits_allocated(segmentation_type: str, highest_number: int) -> int:
    """Bits Allocated of the SEG's frames, as highdicom chooses it (PS3.3 C.8.20.2).

    BINARY frames have 1 bit, FRACTIONAL 8; a LABELMAP has the smallest unsigned integer that
    holds its highest segment number.

    Examples
    --------
    >>> bits_allocated("LABELMAP", 255), bits_allocated("LABELMAP", 256)
    (8, 16)
    """
    if segmentation_type == "BINARY":
        return 1
    if segmentation_type == "LABELMAP" and highest_number > 255:
        return 16
    return 8


def check_bits_allocated(header: Dataset, spec: Any) -> None:
    """Stop if highdicom's header disagrees with the Bits Allocated the frames were made with."""
    if int(header.BitsAllocated) != spec.bits_allocated:
        raise RuntimeError(
            f"daskseg encoded {spec.bits_allocated}-bit frames but highdicom's header has "
            f"BitsAllocated {header.BitsAllocated}; please report this as a daskseg bug."
        )


# Modules of the Segmentation IOD (PS3.3 A.51) whose attributes the writer makes from the
# frames and the source: header_attributes may not set them.
_WRITER_MODULES = frozenset({
    "image-pixel", "segmentation-multi-frame-functional-groups", "multi-frame-dimension",
    "microscope-slide-layer-tile-organization", "frame-extraction", "palette-color-lookup-table",
    "icc-profile", "common-instance-reference",
})
# Where a SEG keeps what these attributes of an image's header say: the functional groups.
_FRAME_GEOMETRY = frozenset({
    "ImagePositionPatient", "ImageOrientationPatient", "SliceThickness", "SpacingBetweenSlices",
    "SliceLocation", "PixelSpacing",
})


@functools.lru_cache(maxsize=1)
def _segmentation_modules() -> dict[str, tuple[str, tuple[tuple[str, str], ...]]]:
    """For each attribute at the top level of the Segmentation IOD's modules, its module and
    that module's top-level (keyword, type) pairs: highdicom's tables of PS3.3."""
    from highdicom._standard_utils import (
        get_iod_module_map, get_module_attribute_map, get_sop_class_iod_map,
    )

    modules = get_module_attribute_map()
    # Segmentation Storage; highdicom's tables give the Label Map SEG the same modules.
    iod = get_iod_module_map()[get_sop_class_iod_map()["1.2.840.10008.5.1.4.1.1.66.4"]]
    found: dict[str, tuple[str, tuple[tuple[str, str], ...]]] = {}
    for module in iod:
        top = tuple((a["keyword"], a["type"]) for a in modules[module["key"]] if not a["path"])
        for keyword, _ in top:
            found.setdefault(keyword, (module["key"], top))
    return found


def _module_name(key: str) -> str:
    return key.replace("-", " ").title()


def check_header_keywords(keywords: Sequence[str]) -> dict[str, list[str]]:
    """Refuse an attribute that no module of a SEG's header holds at its top level, or that the
    writer makes (before any work: it needs only the keywords); the keywords by module."""
    modules = _segmentation_modules()
    touched: dict[str, list[str]] = {}
    for keyword in keywords:
        if keyword not in modules:
            hint = (": a SEG keeps its frames' geometry in the functional groups, which the "
                    "writer makes from the source" if keyword in _FRAME_GEOMETRY else "")
            raise SegmentationInputError(
                f"header_attributes: {keyword} is not an attribute of a SEG's header (of the "
                f"Segmentation IOD's modules, PS3.3 A.51){hint}."
            )
        module, _ = modules[keyword]
        if module in _WRITER_MODULES:
            raise SegmentationInputError(
                f"header_attributes: {keyword} cannot be given; the writer makes the "
                f"{_module_name(module)} module."
            )
        touched.setdefault(module, []).append(keyword)
    return touched


def _check_modules(header: Dataset, keywords: Sequence[str]) -> None:
    """:func:`check_header_keywords`; then, for each module given an attribute, add its Type 2
    attributes (empty) that the header lacks and refuse it without its Type 1 ones (PS3.3
    A.51, 7.4): the header then holds the module whole, as the standard asks of a module
    present."""
    from pydicom.datadict import dictionary_VR

    modules = _segmentation_modules()
    for module, given in check_header_keywords(keywords).items():
        required = modules[given[0]][1]
        missing = [keyword for keyword, type_ in required
                   if type_ == "1" and keyword not in header and keyword not in keywords]
        if missing:
            raise SegmentationInputError(
                f"header_attributes: {', '.join(given)} "
                f"{'belongs' if len(given) == 1 else 'belong'} to the {_module_name(module)} "
                f"module, which then needs {', '.join(missing)} (Type 1, PS3.3); give "
                f"{'it' if len(missing) == 1 else 'them'} too."
            )
        for keyword, type_ in required:
            if type_ == "2" and keyword not in header and keyword not in keywords:
                vr = dictionary_VR(keyword).split(" or ")[0]
                header.add_new(keyword, vr, [] if vr == "SQ" else None)


def _encodable(header: Dataset, character_set: Any) -> bool:
    """Whether every non-ASCII text of ``header`` (its sequences' items too) can be written
    in ``character_set`` without pydicom replacing a character."""
    import warnings

    from pydicom.charset import convert_encodings, encode_string

    texts = [str(value) for element in _text_elements(header)
             for value in (element.value if isinstance(element.value, MultiValue)
                           else [element.value])
             if value is not None and not str(value).isascii()]
    if not texts:
        return True
    if character_set in (None, "", "ISO_IR 6"):
        return False  # the default repertoire is ASCII (pydicom would write Latin-1)
    terms = [character_set] if isinstance(character_set, str) else list(character_set)
    # pydicom encodes the default repertoire (ISO 2022 IR 6, first of a set with code
    # extensions) as Latin-1; it is ASCII (PS3.3 C.12.1.1.2): a text that needs another of
    # the set's repertoires is written with its escape sequence, one in none of them is not
    # written in this set.
    encodings = ["ascii" if term in ("ISO 2022 IR 6", "ISO_IR 6") else encoding
                 for term, encoding in zip(terms, convert_encodings(terms))]
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error")  # pydicom warns as it replaces
            for text in texts:
                encode_string(text, encodings)
    except (UserWarning, UnicodeError, LookupError, ValueError):
        return False
    return True


_TEXT_VRS = frozenset({"SH", "LO", "ST", "LT", "UT", "PN", "UC"})


def _text_elements(dataset: Dataset) -> Iterator[Any]:
    for element in dataset._dict.values():
        if isinstance(element, RawDataElement):
            continue  # as read, in the character set it was read with
        if element.VR == "SQ":
            for item_ in element.value or ():
                yield from _text_elements(item_)
        elif element.VR in _TEXT_VRS:
            yield element


def finish_header(header: Dataset, spec: Any, series_description: str | None,
                  attributes: Sequence[tuple[str, Any]] = ()) -> None:
    """Check highdicom's header against the frames, and set what highdicom does not take:
    the series description and further ``attributes`` (keyword, value), which may not change
    what the header holds already. The header is written in UTF-8 (ISO_IR 192) when its
    texts need characters that its character set (the source's, as highdicom copies it) does
    not hold, or it has none and they are not ASCII."""
    check_bits_allocated(header, spec)
    if series_description is not None:
        header.SeriesDescription = series_description
    if attributes:
        _check_modules(header, [keyword for keyword, _ in attributes])
    for keyword, value in attributes:
        given = list(value) if isinstance(value, tuple) else value
        if keyword in header and header[keyword].value not in (None, "", [], given):
            raise SegmentationInputError(
                f"header_attributes: the SEG's {keyword} is {header[keyword].value!r} (from "
                "the source or the writer's options); it cannot be changed to "
                f"{given!r}."
            )
        setattr(header, keyword, given)
    # Without (0008,0005) a file holds the default repertoire (ASCII) only (PS3.5 6.1);
    # pydicom writes a character its set lacks as "?", with a warning.
    if not _encodable(header, header.get("SpecificCharacterSet")):
        # Texts that highdicom copied from the source as read (in sequences, still the
        # source's bytes) are decoded in its character set first: written as read, they
        # would be Latin-1 (say) in a file that says UTF-8 (an item's texts are in its data
        # set's character set, PS3.5 7.5.3).
        header.decode()
        header.SpecificCharacterSet = "ISO_IR 192"


def segmentation_header(
    source: Dataset,
    stacked: bool,
    dtype: np.dtype,
    grid: TileGrid,
    hd_options: dict[str, Any],
) -> Dataset:
    """The SEG's header for the whole total pixel matrix, or SegmentationInputError."""
    tile = (grid.tile_rows, grid.tile_columns)
    with highdicom_refusals():
        header = proxy_header(source, stacked, dtype, tile, hd_options)
    header.TotalPixelMatrixRows, header.TotalPixelMatrixColumns = grid.rows, grid.columns
    return header
