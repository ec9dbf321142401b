"""The write path for SEGs of volumes: a source series (or multi-frame image) and its mask.

A volume SEG's frames are the mask's slices, one per source frame and segment (PS3.3 C.8.20.2).
The engine of the tiled writer does the work unchanged: the mask, its slices in the order
highdicom stores them, is seen as one tall image of ``slices * rows`` by ``columns`` cut into
tiles of one slice, so tile row ``p`` is the ``p``-th plane of the SEG. Only the header and the
per-frame functional groups differ: the header comes from highdicom's ``Segmentation`` on a
proxy (the first source image, or frame, and a one-slice mask), the per-frame items are serialized
per (segment, plane) from parts encoded once per plane and once per segment.
"""

from __future__ import annotations

import copy
import functools
import pathlib
from typing import Any

import dask.array as da
import highdicom as hd
import numpy as np
from highdicom.spatial import get_volume_positions
from pydicom import config
from pydicom.dataelem import DataElement
from pydicom.dataset import Dataset
from pydicom.tag import BaseTag
from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian
from pydicom.valuerep import format_number_as_ds

from daskseg._file import SequencesAhead, check_native_size, write_file
from daskseg._header import (
    bits_allocated,
    described_numbers,
    ds_element,
    element_header,
    finish_header,
    frame_content_part,
    header_from,
    highdicom_refusals,
    item,
    proxy_pixels,
    segment_parts,
    serialize,
)
from daskseg._inputs import (
    VALID_UID,
    WriteOptions,
    as_dask_array,
    check_label_values_mask,
    check_mask_dtype,
    check_tile_for_codec,
    in_blocks,
    one_segment_plane,
)
from daskseg._nifti import is_nifti_path, match_to_series, nifti_voxel, read_nifti
from daskseg._nrrd import is_nrrd_path, match_nrrd_to_series
from daskseg._series import SourceSeries, frame_geometry, load_source_series
from daskseg._spool import encode_tasks, encoded_frames, numpy_block_task, spool_prefix
from daskseg.encode import MaskValueError, Where
from daskseg.errors import SegmentationInputError
from daskseg.plan import FrameSpec, TileGrid, chunks_of, label_numbers

__all__ = ["volume_mask", "write_volume_segmentation"]


def volume_mask(
    mask: Any, series: SourceSeries, n_segments: int
) -> tuple[da.Array | np.ndarray, bool]:
    """The mask as ``(frames, rows, columns[, segments])`` in the series' order, and whether stacked.

    A mask in memory (numpy, a gzipped NIfTI file or an NRRD file) stays a numpy array (views
    where it can), cut into blocks by the writer; any other is a Dask array.

    Mask frame ``k`` belongs to source frame ``k`` in the order given (as in highdicom; a
    folder's images in slice order, see :func:`~daskseg._series.load_source_series`), except
    for a NIfTI or NRRD file, which carries its geometry and is matched to the series by it.
    Other masks (Dask, Zarr, numpy) are wrapped without reading them.

    Raises
    ------
    SegmentationInputError
        If the mask's shape does not fit the series and segments, or a NIfTI or NRRD file's
        geometry does not match the series'.
    SegmentationTypeError
        If its values are neither boolean, integer nor floating point, or it is floating point
        without a segment axis (one segment, as in highdicom) while several are described.
    """
    frames, rows, columns = series.number_of_frames, series.rows, series.columns
    if is_nifti_path(mask):
        array, affine = read_nifti(mask)
        array = match_to_series(array, affine, series)
    elif is_nrrd_path(mask):
        array = match_nrrd_to_series(mask, series)
    else:
        array = mask if isinstance(mask, np.ndarray) else as_dask_array(mask)
        # One image: its mask may come without the frame axis, as in highdicom.
        if frames == 1 and (
            array.ndim == 2 or (array.ndim == 3 and array.shape == (rows, columns, n_segments))
        ):
            array = array[None]
    expected = (frames, rows, columns)
    if (is_nifti_path(mask) or is_nrrd_path(mask)) and array.ndim == 3 and (
        array.dtype.kind == "f" and n_segments > 1
    ):
        array = whole_labels(array, str(mask))
    if array.ndim == 3 and array.dtype.kind == "f" and tuple(array.shape) == expected:
        array = one_segment_plane(array, n_segments)
    if array.ndim not in (3, 4) or tuple(array.shape[:3]) != expected:
        raise SegmentationInputError(
            f"The mask has shape {tuple(array.shape)}, but the source has {frames} frames of "
            f"{rows} x {columns}: expected labels ({frames}, {rows}, {columns}) or one plane per "
            f"segment ({frames}, {rows}, {columns}, {n_segments}), frame k for source frame k."
        )
    stacked = array.ndim == 4
    if stacked and array.shape[3] != n_segments:
        raise SegmentationInputError(
            f"The mask stacks {array.shape[3]} segment planes on its last axis, but "
            f"{n_segments} segments are described; give one description per plane."
        )
    check_mask_dtype(array.dtype, stacked, "volume")
    return array, stacked


def whole_labels(array: da.Array | np.ndarray, name: str) -> da.Array | np.ndarray:
    """A label volume stored as floating point (MONAI saves float32 by default) as integer
    labels, as dcmqi (ITK) reads it; a value that is not a whole number from 0 is refused.

    Several segments are described, so the values are labels, not one segment's fractions.
    """
    if isinstance(array, np.ndarray):
        _check_whole(array, name)
        highest = float(array.max()) if array.size else 0.0
        dtype = next((t for t in (np.uint8, np.uint16, np.uint32)
                      if highest <= np.iinfo(t).max), np.uint64)
        return array.astype(dtype)
    return array.map_blocks(_whole_block, name, dtype=np.uint32)


def _check_whole(block: np.ndarray, name: str) -> None:
    bad = ~np.isfinite(block) | (block < 0) | (block != np.floor(block)) | (block >= 2**32)
    if bad.any():
        raise SegmentationInputError(
            f"The mask {name} stores its labels as floating point, and one is "
            f"{float(block[bad][0]):g}, not a whole number from 0: labels are segment numbers (or "
            "label_values)."
        )


def _whole_block(block: np.ndarray, name: str) -> np.ndarray:
    _check_whole(block, name)
    return block.astype(np.uint32)


# --------------------------------------------------------------------------- header


def _proxy_source(series: SourceSeries) -> Dataset:
    """The source of the proxy: the first image given, or a one-frame copy of a multi-frame one.

    highdicom takes the header's copied attributes (patient, study, pixel measures, content
    label) from the first source image given, so the proxy's source is that image.
    """
    image = series.datasets[0]
    if not series.multiframe:
        return image
    # A new dict of the same elements with one frame. The functional groups are copies:
    # highdicom writes into the proxy's (SpacingBetweenSlices 1.0 for one plane), which would
    # change the caller's Dataset and then pass for the source's own spacing.
    proxy = Dataset({tag: element for tag, element in image.items()
                     if tag not in (0x00280008, 0x52009230, 0x52009229)})
    proxy.NumberOfFrames = 1
    proxy.SharedFunctionalGroupsSequence = copy.deepcopy(image.SharedFunctionalGroupsSequence)
    proxy.PerFrameFunctionalGroupsSequence = [
        copy.deepcopy(image.PerFrameFunctionalGroupsSequence[0])
    ]
    first, shared = proxy.PerFrameFunctionalGroupsSequence[0], proxy.SharedFunctionalGroupsSequence[0]
    if "PlanePositionSequence" not in first and "PlanePositionSequence" in shared:
        # A one-frame image's position in the shared groups (as highdicom's legacy conversion
        # of one slice puts it): highdicom reads a frame's position from its own groups only.
        first.PlanePositionSequence = shared.PlanePositionSequence
        del shared.PlanePositionSequence
    return proxy


def _proxy_segmentation(
    series: SourceSeries, stacked: bool, dtype: np.dtype, hd_options: dict[str, Any],
) -> hd.seg.Segmentation:
    """highdicom's SEG of the first source image (or frame), for a one-slice mask."""
    proxy = proxy_pixels((1, series.rows, series.columns), stacked, dtype,
                         described_numbers(hd_options))
    return hd.seg.Segmentation(
        source_images=[_proxy_source(series)],
        pixel_array=proxy,
        omit_empty_frames=False,
        **{**hd_options, "transfer_syntax_uid": ExplicitVRLittleEndian},
    )


def _volume_header(
    seg: hd.seg.Segmentation, series: SourceSeries, hd_options: dict[str, Any]
) -> Dataset:
    """The proxy's header, made the series' own: every source referenced, its slice spacing."""
    header = header_from(seg, hd_options["transfer_syntax_uid"])
    if "DimensionOrganizationType" in header:
        del header.DimensionOrganizationType  # set from the planes written
    # highdicom lists every source image in the order given, in the SourceImageSequence and
    # per series in the ReferencedSeriesSequence.
    references = _source_references(series)
    by_series: dict[str, list[Dataset]] = {}
    for image, reference in zip(series.datasets, references):
        by_series.setdefault(image.SeriesInstanceUID, []).append(reference)
    header.SourceImageSequence = references
    referenced_series = []
    for series_uid, instances in by_series.items():
        item = Dataset()
        item.SeriesInstanceUID = series_uid
        item.ReferencedInstanceSequence = instances
        referenced_series.append(item)
    header.ReferencedSeriesSequence = referenced_series
    # highdicom copies SpacingBetweenSlices from the first source image, or else derives it
    # from all planes (omitted ones included); the proxy had one plane.
    measures = header.SharedFunctionalGroupsSequence[0].PixelMeasuresSequence[0]
    first = series.datasets[0]
    if series.multiframe:
        copied = "SpacingBetweenSlices" in first.SharedFunctionalGroupsSequence[0].get(
            "PixelMeasuresSequence", [Dataset()])[0]
    else:
        copied = first.get("SpacingBetweenSlices") is not None
    if not copied:
        spacing, _ = get_volume_positions(series.positions.tolist(), series.orientation.tolist())
        if spacing is None:
            if "SpacingBetweenSlices" in measures:
                del measures.SpacingBetweenSlices
        else:
            measures.SpacingBetweenSlices = format_number_as_ds(spacing)
    return header


_REFERENCED_CLASS, _REFERENCED_INSTANCE = BaseTag(0x00081150), BaseTag(0x00081155)


def _source_references(series: SourceSeries) -> list[Dataset]:
    """An item (ReferencedSOPClassUID, ReferencedSOPInstanceUID) per source image, in order.

    Set through pydicom, each UID is checked against a regular expression as it is set: 8 ms
    for a 300-image series (4 ms this way), in the thread that builds the header while the
    workers encode, on the same cores. When every UID passes the same check here, the items
    are made without it.
    """
    pairs = [(image.SOPClassUID, image.SOPInstanceUID) for image in series.datasets]
    if not all(len(uid) <= 64 and VALID_UID.fullmatch(uid)
               for pair in pairs for uid in pair):
        references = []
        for class_uid, instance_uid in pairs:
            reference = Dataset()  # pydicom warns (or raises) of the invalid UID, as in highdicom
            reference.ReferencedSOPClassUID = class_uid
            reference.ReferencedSOPInstanceUID = instance_uid
            references.append(reference)
        return references
    return [
        Dataset({
            _REFERENCED_CLASS: DataElement(_REFERENCED_CLASS, "UI", class_uid,
                                           validation_mode=config.IGNORE),
            _REFERENCED_INSTANCE: DataElement(_REFERENCED_INSTANCE, "UI", instance_uid,
                                              validation_mode=config.IGNORE),
        })
        for class_uid, instance_uid in pairs
    ]


def _position_part(image_position: Any, implicit: bool) -> bytes:
    """The encoded PlanePositionSequence of a frame, as highdicom's ``PlanePositionSequence``
    and pydicom write it, built directly: one per plane, and making it through pydicom cost
    most of the per-frame items' time."""
    body = item(ds_element(0x00200032, image_position, implicit))  # ImagePositionPatient
    return element_header(0x00209113, "SQ", len(body), implicit) + body


class _DerivationParts:
    """The encoded DerivationImageSequence of single-frame source images, one per image.

    pydicom encodes it once per SOP class and UID length, with a placeholder UID of that length
    in ReferencedSOPInstanceUID; each image's part is that encoding with its UID put in the
    placeholder's bytes (the lengths do not change). Encoding it through pydicom for each of
    hundreds of images cost tenths of a second.
    """

    def __init__(self, template: Dataset, implicit: bool) -> None:
        self._template = template
        self._implicit = implicit
        self._parts: dict[tuple[str, int], tuple[bytes, bytes] | None] = {}

    def _encode(self, sop_class_uid: str, sop_instance_uid: str) -> bytes:
        reference = self._template.DerivationImageSequence[0].SourceImageSequence[0]
        reference.ReferencedSOPClassUID = sop_class_uid
        reference.ReferencedSOPInstanceUID = sop_instance_uid
        derivation = Dataset()
        derivation.add(self._template["DerivationImageSequence"])
        return serialize(derivation, self._implicit)

    def part(self, sop_class_uid: str, sop_instance_uid: str) -> bytes:
        key = (sop_class_uid, len(sop_instance_uid))
        if key not in self._parts:
            # "1" then nines: a valid UID of that length, found once in the encoding or not used.
            placeholder = ("1" + "9" * (len(sop_instance_uid) - 1))[: len(sop_instance_uid)]
            encoded = self._encode(sop_class_uid, placeholder)
            split = encoded.split(placeholder.encode("ascii"))
            self._parts[key] = (split[0], split[1]) if len(split) == 2 and placeholder else None
        pieces = self._parts[key]
        if pieces is None:
            return self._encode(sop_class_uid, sop_instance_uid)
        return pieces[0] + sop_instance_uid.encode("ascii") + pieces[1]


class _PlaneParts:
    """The encoded parts of the per-frame items that each plane has once, for every segment:
    the derivation reference (highdicom's item of the proxy's frame is the template) and the
    plane position. Made while the workers encode, not after the last block."""

    def __init__(self, template: Dataset, series: SourceSeries, order: np.ndarray,
                 implicit: bool) -> None:
        self.derivation: list[bytes] = []
        self.position: list[bytes] = []
        reference = template.DerivationImageSequence[0].SourceImageSequence[0]
        derivations = _DerivationParts(template, implicit)
        for frame in order:
            if series.multiframe:
                # The frame of the one source image (PS3.3 C.7.6.1.1.3: ReferencedFrameNumber).
                image = series.datasets[0]
                reference.ReferencedSOPClassUID = image.SOPClassUID
                reference.ReferencedSOPInstanceUID = image.SOPInstanceUID
                reference.ReferencedFrameNumber = int(frame) + 1
                # Where load_source_series found it: the frame's own item, else the shared
                # one (a one-frame image may keep it there).
                image_position = frame_geometry(image, int(frame), "PlanePositionSequence",
                                                "ImagePositionPatient")
                derivation = Dataset()
                derivation.add(template["DerivationImageSequence"])
                self.derivation.append(serialize(derivation, implicit))
            else:
                image = series.datasets[frame]
                image_position = image.ImagePositionPatient
                self.derivation.append(
                    derivations.part(str(image.SOPClassUID), str(image.SOPInstanceUID))
                )
            self.position.append(_position_part(image_position, implicit))


class _VolumeFrameItems:
    """Per-frame functional group items of a volume SEG, serialized one at a time.

    The parts are encoded once per plane (:class:`_PlaneParts`) and once per segment (segment
    identification); only the dimension index values are packed per frame. The items equal
    highdicom's (``_get_pffg_item``).
    """

    def __init__(self, planes: _PlaneParts, dimension_index: np.ndarray, labelmap: bool,
                 n_segments: int, implicit: bool) -> None:
        self._implicit = implicit
        self._labelmap = labelmap
        self._dimension_index = dimension_index
        self._derivation_parts = planes.derivation
        self._position_parts = planes.position
        self._segment_parts = segment_parts(n_segments, labelmap, implicit)

    def item(self, channel: int, plane: int, _column: int) -> bytes:
        spatial = int(self._dimension_index[plane])
        index_values = (spatial,) if self._labelmap else (channel + 1, spatial)
        frame_content = frame_content_part(index_values, self._implicit)
        # Elements in tag order: (0008,9124), (0020,9111), (0020,9113), (0062,000A).
        return item(
            self._derivation_parts[plane]
            + frame_content
            + self._position_parts[plane]
            + self._segment_parts[channel if not self._labelmap else 0]
        )


# --------------------------------------------------------------------------- writing

# Bytes of one block task's input and of its frames before encoding: a few of these per
# worker bound the memory. 32 MB, measured on 300 x 512² x 117 segments, BINARY native (median
# of 6 writes, peak RSS of the process tree): 24 MB 0.70-0.74 s and 480 MiB, 32 MB 0.64-0.67 s
# and 495 MiB, 48 MB 0.63 s and 520-540 MiB.
_BLOCK_BYTES = 32 * 2**20
_MAX_SLICES_PER_BLOCK = 64
# Below that, a series is cut into _BLOCKS_PER_THREAD blocks for each worker thread: each task
# costs the client, the scheduler and the worker's event loop a few ms of CPU, taken from the
# codec on a small machine, while a few tasks a thread keep every worker busy to the end.
# Measured on the LABELMAP JPEG 2000 case (300 x 512², 2 workers, medians of 7 writes in
# turns): 2 blocks 0.66 s, 4 blocks 0.58 s, 6 blocks 0.54 s, 16 blocks 0.61 s. When the
# cluster's threads are not known, _MIN_BLOCKS.
_BLOCKS_PER_THREAD = 3
_MIN_BLOCKS = 16


def _slices_per_block(series: SourceSeries, spec: FrameSpec, stacked: bool, itemsize: int,
                      threads: int | None = None) -> int:
    pixels = series.rows * series.columns
    per_slice = max(
        pixels * itemsize * (spec.n_segments if stacked else 1),
        -(-pixels * spec.bits_allocated // 8) * spec.n_channels,
    )
    blocks = _BLOCKS_PER_THREAD * threads if threads else _MIN_BLOCKS
    balanced = -(-series.number_of_frames // blocks)
    return max(1, min(_MAX_SLICES_PER_BLOCK, _BLOCK_BYTES // per_slice, balanced))


def write_volume_segmentation(
    mask: Any,
    source_images: Any,
    destination: pathlib.Path,
    options: WriteOptions,
    hd_options: dict[str, Any],
    *,
    client: Any,
    overwrite: bool,
    progress: bool,
) -> pathlib.Path:
    """The volume branch of :func:`daskseg.write_segmentation`, options already checked there.

    ``hd_options`` are highdicom's ``Segmentation`` keyword arguments (UIDs, numbers, device,
    content fields, segment descriptions, type and transfer syntax).
    """
    series = load_source_series(source_images)
    given = [key for key in ("plane_positions", "plane_orientation", "pixel_measures",
                             "tile_size") if hd_options.get(key) is not None]
    if given:
        raise SegmentationInputError(
            f"{', '.join(given)} cannot be given for a SEG of a series: its frames take the "
            "geometry of the source images."
        )
    if hd_options.get("further_source_images"):
        # highdicom references a further image from the frames at its position; not done here.
        raise SegmentationInputError(
            "further_source_images is not supported for a SEG of a series yet; use highdicom."
        )
    check_tile_for_codec((series.rows, series.columns), options.transfer_syntax_uid)
    numbers = described_numbers(hd_options)
    n_segments = len(numbers)
    array, stacked = volume_mask(mask, series, n_segments)
    check_label_values_mask(options, stacked, array.dtype)
    order = series.sort_index()  # tile row p is the p-th plane in highdicom's order

    spec = FrameSpec(
        segmentation_type=options.segmentation_type,
        n_segments=n_segments,
        stacked=stacked,
        tile_rows=series.rows,
        tile_columns=series.columns,
        transfer_syntax_uid=str(options.transfer_syntax_uid),
        bits_allocated=bits_allocated(options.segmentation_type, numbers[-1]),
        max_fractional_value=options.max_fractional_value,
        omit_empty_frames=options.omit_empty_frames,
        label_numbers=options.label_values or label_numbers(numbers),
    )
    n_planes = series.number_of_frames
    # One slice per tile row of a tall image: (planes * rows, columns[, segments]).
    grid = TileGrid(n_planes * series.rows, series.columns, series.rows, series.columns)
    check_native_size(spec, grid)
    prefix = spool_prefix(destination)

    def tasks(threads: int | None) -> list[tuple[int, Any]]:
        slices = _slices_per_block(series, spec, stacked, array.dtype.itemsize, threads)
        return _encode_tasks(array, order, slices, spec, prefix, mask)

    shape = (spec.n_channels, n_planes, 1)
    # highdicom builds the header while the workers encode (as for a tiled image, see write).
    build_header = functools.partial(_header_parts, series, stacked, array.dtype, hd_options,
                                     order, spec, options)
    try:
        with encoded_frames(client, tasks, destination, shape, progress, build_header, prefix,
                            mask=mask) as (spool, plane_nonempty, overlap, (header, planes, ahead)):
            _finish(destination, header, planes, ahead, series, order, spool, spec, grid,
                    plane_nonempty, overlap, options, hd_options, overwrite)
    except MaskValueError as error:
        if error.where is None:
            raise
        # The blocks are planes in slice order one below the other: say which mask frames.
        message = str(error).replace(str(error.where),
                                     _in_mask_frames(error.where, series, order, mask))
        raise MaskValueError(message) from None
    return destination


def _in_mask_frames(where: Where, series: SourceSeries, order: np.ndarray,
                    mask: Any = None) -> str:
    """Where a value is, in the mask's frames as given (a block's rows are planes in order);
    for a NIfTI file, its voxel (the frames are the file's slices placed on the series)."""
    rows = series.rows
    first, last = where.rows[0] // rows, where.rows[1] // rows
    frames = [int(order[plane]) for plane in range(first, last + 1)]
    columns = f"columns {where.columns[0]}..{where.columns[1]}"
    if len(frames) == 1:
        uid = series.sop_instance_uids[frames[0]]
        within = Where((where.rows[0] % rows, where.rows[1] % rows), where.columns)
        if is_nifti_path(mask) and within.rows[0] == within.rows[1] and (
            within.columns[0] == within.columns[1]
        ):
            voxel = nifti_voxel(mask, series, frames[0], within.rows[0], within.columns[0])
            if voxel is not None:
                return (f"at the file's voxel (i, j, k) {voxel} (source image {uid}, {within})")
        return f"in mask frame {frames[0]} (of source image {uid}) {within}"
    listed = ", ".join(map(str, frames[:8])) + (", ..." if len(frames) > 8 else "")
    return f"in one of the mask frames {listed}, {columns}"


def _header_parts(
    series: SourceSeries, stacked: bool, dtype: np.dtype, hd_options: dict[str, Any],
    order: np.ndarray, spec: FrameSpec, options: WriteOptions,
) -> tuple[Dataset, _PlaneParts, SequencesAhead]:
    """The SEG's header, the per-frame items' parts of each plane in ``order`` (from
    highdicom's per-frame item of the proxy's frame), and the header's sequences that grow
    with the series and the segments, serialized. ``header_attributes`` that conflict with the
    header are refused here, while the workers encode, which stops the encoding."""
    with highdicom_refusals():
        seg = _proxy_segmentation(series, stacked, dtype,
                                  {**hd_options, "dimension_organization_type": None})
    header = _volume_header(seg, series, hd_options)
    finish_header(header, spec, options.series_description, options.header_attributes)
    ahead = SequencesAhead(header, ("ReferencedSeriesSequence", "SegmentSequence",
                                    "SourceImageSequence"))
    planes = _PlaneParts(seg.PerFrameFunctionalGroupsSequence[0], series, order,
                         header.file_meta.TransferSyntaxUID == ImplicitVRLittleEndian)
    return header, planes, ahead


def _finish(
    destination: pathlib.Path, header: Dataset, planes: _PlaneParts, ahead: SequencesAhead,
    series: SourceSeries, order: np.ndarray, spool: Any, spec: FrameSpec, grid: TileGrid,
    plane_nonempty: np.ndarray, overlap: bool, options: WriteOptions, hd_options: dict[str, Any],
    overwrite: bool,
) -> None:
    """The header's last values (overlap, organization), the per-frame items, the file."""
    n_planes = series.number_of_frames
    n_segments = spec.n_segments
    if header.get("SegmentsOverlap") != "UNDEFINED":
        header.SegmentsOverlap = "YES" if overlap else "NO"
    # highdicom keeps every plane when it would omit them all, as write_file does (an all-empty
    # mask; so FRACTIONAL fractions that all round to 0 here, where highdicom fails).
    if not spec.omit_empty_frames or not (spool.lengths >= 0).any():
        included = np.arange(n_planes)
        dimension_index = included + 1
    else:
        included = np.flatnonzero(plane_nonempty[:, 0])
        dimension_index = np.cumsum(plane_nonempty[:, 0])
    inferred = _dimension_organization(series, order[included], spec)
    if options.dimension_organization_type == "3D" and inferred is None:
        raise SegmentationInputError(
            "dimension_organization_type '3D' was given, but the SEG's planes are not a "
            "regularly spaced volume (or it has several segments)."
        )
    if inferred is not None:
        header.DimensionOrganizationType = inferred
    items = _VolumeFrameItems(
        planes, dimension_index, spec.segmentation_type == "LABELMAP", n_segments,
        header.file_meta.TransferSyntaxUID == ImplicitVRLittleEndian,
    )
    write_file(destination, header, spool, spec, grid, False, plane_nonempty,
               hd_options, options.use_extended_offset_table, overwrite, items=items,
               ahead=ahead)


def _encode_tasks(
    array: da.Array | np.ndarray, order: np.ndarray, slices: int, spec: FrameSpec,
    spool_prefix: str | None = None, mask: Any = None,
) -> list[tuple[int, Any]]:
    """Encode tasks of the mask's frames in ``order``, ``slices`` whole frames a block.

    Each block is a tall image of its slices one below the other, whose tile row ``p`` is the
    ``p``-th plane of the SEG. ``mask``, the user's, lets a Zarr mask be read in the blocks
    directly (:func:`~daskseg._inputs.in_blocks`).
    """
    if isinstance(array, np.ndarray):
        # Each task carries only its own slices. Frames in file order or its reverse (the
        # usual cases) are views; only a shuffled order copies the mask.
        step = int(order[1] - order[0]) if len(order) > 1 else 1
        if abs(step) == 1 and (np.diff(order) == step).all():
            stop = int(order[-1]) + step
            array = array[int(order[0]) : (None if stop < 0 else stop) : step]
        else:
            array = array[order]
        tasks = []
        for start in range(0, len(order), slices):
            block = array[start : start + slices]
            tall = (len(block) * block.shape[1], *block.shape[2:])
            tasks.append(numpy_block_task(block, spec, start, 0, shape=tall,
                                          spool_prefix=spool_prefix))
        return tasks
    rest = tuple(array.shape[1:])
    in_order = np.arange(len(order))
    if (order == in_order).all():
        blocks = in_blocks(mask, array, (slices, *rest))
    elif (order == in_order[::-1]).all():
        # Slices stored against the slice normal (the usual CT file order of highdicom's
        # volumes): read in blocks as stored, each reversed; the short block read first ends
        # the SEG.
        blocks = in_blocks(mask, array, (chunks_of(len(order), slices)[::-1], *rest))[::-1]
    else:
        blocks = array[order].rechunk((slices, *rest))
    tall_mask = blocks.reshape((len(order) * array.shape[1], *array.shape[2:]))
    return encode_tasks(tall_mask, spec, spool_prefix)


def _dimension_organization(
    series: SourceSeries, planes: np.ndarray, spec: FrameSpec
) -> str | None:
    """'3D' when the included planes, of one channel, are regularly spaced (as highdicom)."""
    if len(planes) < 2 or spec.n_channels > 1:
        return None
    spacing, _ = get_volume_positions(series.positions[planes].tolist(),
                                      series.orientation.tolist(), sort=False)
    return "3D" if spacing is not None and spacing > 0.0 else None
