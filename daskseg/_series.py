"""Reading and checking the headers of a source series (never its pixel data).

A volume SEG refers either to a series of single-frame images (CT, MR, PET slices) or to one
multi-frame image that is not tiled (Enhanced CT/MR, say). Either way the SEG needs, per source
frame, the instance it comes from, the frame's position, and one orientation, size and pixel
spacing shared by all frames (PS3.3 C.7.6.2: a SEG's frames are planes of one frame of
reference). Mask frame ``k`` belongs to source frame ``k`` in the order given, as in highdicom;
a folder's images have no given order and are taken in highdicom's slice order.
"""

from __future__ import annotations

import os
import pathlib
from collections import Counter
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, TypeGuard

import numpy as np
import pydicom
from highdicom.spatial import get_plane_sort_index, is_tiled_image
from pydicom.dataelem import DataElement
from pydicom.dataset import Dataset
from pydicom.multival import MultiValue
from pydicom.tag import Tag
from pydicom.uid import UID

from daskseg._frames import SEG_SOP_CLASSES, invalid_dicom_reason
from daskseg._inputs import is_uid_form
from daskseg.errors import SegmentationInputError, SegmentationTypeError

__all__ = ["SourceSeries", "is_volume_source", "load_source_series", "read_source_header"]

# Positions and direction cosines are decimal strings of at most 16 characters (PS3.5 6.2, DS):
# values written by different software for one series agree to about this much.
ORIENTATION_TOLERANCE = 1e-4
# Single-frame classes whose IOD has the Image Plane module (PS3.3 C.7.6.2, Type 1): an image
# of them without its geometry lost it, rather than never had it. CT, MR, PET, RT Dose.
_CROSS_SECTIONS = frozenset({
    "1.2.840.10008.5.1.4.1.1.2", "1.2.840.10008.5.1.4.1.1.4", "1.2.840.10008.5.1.4.1.1.128",
    "1.2.840.10008.5.1.4.1.1.481.2",
})
# Files in a series folder are read by this many threads: reading headers waits on the disk.
_READ_THREADS = 8
# The Media Storage Directory SOP class (a DICOMDIR), which a series folder may hold.
_DICOMDIR = "1.2.840.10008.1.3.10"
_WHOLE_SLIDE = "1.2.840.10008.5.1.4.1.1.77.1.6"  # VL Whole Slide Microscopy Image Storage


@dataclass(frozen=True)
class SourceSeries:
    """The headers of a source series and the geometry of its frames, in the order given.

    Attributes
    ----------
    datasets
        The headers without pixel data: one per single-frame image, or the one multi-frame image.
    multiframe
        Whether ``datasets`` is one multi-frame image whose frames are the volume's slices.
    rows, columns
        The size of every frame.
    orientation
        ImageOrientationPatient shared by every frame (row direction, then column direction).
    pixel_spacing
        PixelSpacing shared by every frame (between rows, between columns), in mm.
    positions
        ``(frames, 3)`` ImagePositionPatient of each frame, in mm.
    sop_instance_uids
        The SOPInstanceUID of the instance each frame comes from.
    frame_of_reference_uid
        The series' FrameOfReferenceUID.
    """

    datasets: tuple[Dataset, ...]
    multiframe: bool
    rows: int
    columns: int
    orientation: np.ndarray
    pixel_spacing: np.ndarray
    positions: np.ndarray
    sop_instance_uids: tuple[str, ...]
    frame_of_reference_uid: str

    @property
    def number_of_frames(self) -> int:
        """How many frames (slices) the series has."""
        return len(self.positions)

    def sort_index(self) -> np.ndarray:
        """Frame indices in the order that sorts the frames along the slice normal.

        The order is highdicom's (``get_plane_sort_index``, as ``hd.spatial.sort_datasets`` and
        highdicom's volumes): slice, row and column indices form a right-handed system, so the
        slices run along column direction x row direction (head to feet for an axial series).
        """
        return np.asarray(
            get_plane_sort_index(self.positions.tolist(), self.orientation.tolist()), dtype=np.intp
        )


def is_volume_source(source_images: object) -> bool:
    """Whether ``source_images`` names a series or a non-tiled image rather than one tiled image.

    Reads at most one header. A folder, or a sequence of more than one image, is a series.
    """
    if isinstance(source_images, (str, os.PathLike)) and pathlib.Path(source_images).is_dir():
        return True
    if isinstance(source_images, (Dataset, str, os.PathLike)):
        items: Sequence[object] = [source_images]
    elif isinstance(source_images, (bytes, bytearray)):  # not a sequence of images
        return False
    elif isinstance(source_images, Sequence) and len(source_images) > 0:
        items = source_images
    else:
        return False
    if len(items) > 1:
        return True
    first = items[0]
    if isinstance(first, (str, os.PathLike)):
        try:
            # As a series' files are read (a file without its preamble included), so that one
            # image given alone is taken for what it is.
            first = _read_header(pathlib.Path(first), skip_non_dicom=True)
        except Exception:  # the tiled path reports unreadable files with its own message
            return False
    return isinstance(first, Dataset) and "SOPClassUID" in first and not is_tiled_image(first)


def read_source_header(path: str | os.PathLike) -> Dataset:
    """The header of the source image file ``path``, read as a series' files are (one without
    its preamble included); a missing file, a folder or a DICOMDIR is refused, naming it."""
    header = _read_header(pathlib.Path(path), skip_non_dicom=False)
    assert header is not None  # skip_non_dicom=False: read or refused
    _refuse_dicomdir(header, path)
    return header


def _refuse_dicomdir(header: Dataset, path: str | os.PathLike) -> None:
    if _is_dicomdir(header):
        raise SegmentationInputError(
            f"The source image {path} is a DICOMDIR (the index of a DICOM medium), not an "
            "image: pass the images it indexes (a series: the folder that holds it; a slide: "
            "its image's file)."
        )


def _read_header(path: pathlib.Path, skip_non_dicom: bool) -> Dataset | None:
    try:
        return pydicom.dcmread(path, stop_before_pixels=True)
    except FileNotFoundError as error:
        raise SegmentationInputError(f"The source image {path} does not exist.") from error
    except IsADirectoryError as error:
        raise SegmentationInputError(
            f"The source image {path} is a folder: pass a folder holding one series on its "
            "own (not in a list of images), or the paths of its files."
        ) from error
    except pydicom.errors.InvalidDicomError as error:
        # Without the preamble and file meta (PS3.10 7.1): a bare data set, as older PACS
        # exports write them, which highdicom reads with force=True and dcmqi (ITK) reads too.
        bare = _read_bare(path)
        if bare is not None:
            return bare
        if skip_non_dicom:
            return None
        raise SegmentationInputError(f"The source image {path} is not a DICOM file: "
                                     f"{invalid_dicom_reason(error)}") from error


def _read_bare(path: pathlib.Path) -> Dataset | None:
    """A DICOM data set without preamble and file meta, or None when the file is not one (an
    image needs its SOP class and instance UIDs, which a text or JSON file read by force has
    not)."""
    try:
        with open(path, "rb") as file:
            start = file.read(2)
        # A bare data set starts with its lowest element: of group 0008 (SpecificCharacterSet,
        # ImageType, SOPClassUID), or 0002 when its file meta is kept; little endian. Other
        # files (text, JSON) are not read by force, which would warn about them.
        if start not in (b"\x08\x00", b"\x02\x00"):
            return None
        dataset = pydicom.dcmread(path, stop_before_pixels=True, force=True)
        uids = [str(dataset.get(keyword, "")) for keyword in ("SOPClassUID", "SOPInstanceUID")]
    except Exception:  # noqa: BLE001 - pydicom raises many kinds on what is not DICOM
        return None
    return dataset if all(is_uid_form(uid) for uid in uids) else None


def _read_headers(paths: Sequence[pathlib.Path], skip_non_dicom: bool) -> list[Dataset | None]:
    if len(paths) <= 1:
        return [_read_header(path, skip_non_dicom) for path in paths]
    with ThreadPoolExecutor(min(_READ_THREADS, len(paths))) as pool:
        return list(pool.map(lambda path: _read_header(path, skip_non_dicom), paths))


def _is_dicomdir(dataset: Dataset) -> bool:
    # A DICOMDIR names its class in its file meta only (PS3.10 7.1; PS3.3 F.3 has no
    # SOPClassUID in the directory's dataset).
    meta = getattr(dataset, "file_meta", None)
    return _DICOMDIR in (dataset.get("SOPClassUID"),
                         meta.get("MediaStorageSOPClassUID") if meta is not None else None)


def _is_folder(source_images: object) -> TypeGuard[str | os.PathLike]:
    return isinstance(source_images, (str, os.PathLike)) and pathlib.Path(source_images).is_dir()


def _gather(source_images: object) -> list[Dataset]:
    """The headers of the images named by ``source_images``, in the order given (of a folder:
    by file name, for a stable order; :func:`load_source_series` puts them in slice order)."""
    if _is_folder(source_images):
        folder = pathlib.Path(source_images)
        paths = sorted(path for path in folder.rglob("*") if path.is_file())
        # A SEG written into the series' folder (of an earlier run) is not one of its images.
        datasets = [
            ds for ds in _read_headers(paths, skip_non_dicom=True)
            if ds is not None and not _is_dicomdir(ds)
            and str(ds.get("SOPClassUID", "")) not in SEG_SOP_CLASSES
        ]
        if not datasets:
            raise SegmentationInputError(f"The folder {folder} holds no DICOM image.")
        return datasets
    if isinstance(source_images, (Dataset, str, os.PathLike)):
        source_images = [source_images]
    if not isinstance(source_images, Sequence) or len(source_images) == 0:
        raise SegmentationTypeError(
            "source_images must be a pydicom Dataset, a path, a folder holding one series, or a "
            f"non-empty sequence of Datasets or paths, not {type(source_images).__name__}."
        )
    paths = [pathlib.Path(item) for item in source_images if isinstance(item, (str, os.PathLike))]
    headers = iter(_read_headers(paths, skip_non_dicom=False))
    datasets = []
    for item in source_images:
        if isinstance(item, Dataset):
            datasets.append(item)
        elif isinstance(item, (str, os.PathLike)):
            header = next(headers)
            assert header is not None  # skip_non_dicom=False: every path is read or refused
            _refuse_dicomdir(header, item)
            datasets.append(header)
        else:
            raise SegmentationTypeError(
                f"Each source image must be a pydicom Dataset or a path, not {type(item).__name__}."
            )
    return datasets


def _describe(dataset: Dataset) -> str:
    """An image for messages: its file, if read from one, and its SOP instance."""
    instance = f"SOP instance {dataset.get('SOPInstanceUID', '(no SOPInstanceUID)')}"
    filename = getattr(dataset, "filename", None)
    return f"{filename}, {instance}" if isinstance(filename, str) and filename else instance


def _require(dataset: Dataset, keywords: Sequence[str], what: str,
             values: dict[str, Any] | None = None) -> None:
    """Refuse ``dataset`` if it lacks one of ``keywords`` (looked up in ``values``, if given)."""
    found = values if values is not None else {keyword: dataset.get(keyword) for keyword in keywords}
    missing = [keyword for keyword in keywords if found[keyword] in (None, "")]
    if missing:
        raise SegmentationInputError(
            f"The source image ({_describe(dataset)}) lacks {', '.join(missing)}: {what}"
        )


def _one_value(values: Sequence[dict[str, Any]], keyword: str, what: str,
               datasets: Sequence[Dataset] | None = None) -> object:
    counts = Counter(str(found[keyword]) for found in values)
    if len(counts) > 1:
        parts = []
        for rank, (value, count) in enumerate(counts.most_common()):
            part = f"{value} ({count} images)"
            if datasets is not None and rank > 0 and count <= 3:
                # The few odd ones out: which images they are, so that they can be removed.
                holders = [_describe(ds) for ds, found in zip(datasets, values)
                           if str(found[keyword]) == value]
                part = f"{value} ({'; '.join(holders)})"
            parts.append(part)
        raise SegmentationInputError(
            f"The source images do not form one series: they have {len(counts)} different "
            f"{keyword}s: {', '.join(parts)}. {what}"
        )
    return values[0][keyword]


# What load_source_series reads of each single-frame image, once: through pydicom each look-up
# costs microseconds, which hundreds of images make milliseconds before the first block starts.
_SLICE_KEYWORDS = (
    "SOPClassUID", "SOPInstanceUID", "NumberOfFrames", "StudyInstanceUID", "SeriesInstanceUID",
    "FrameOfReferenceUID", "Rows", "Columns", "ImagePositionPatient", "ImageOrientationPatient",
    "PixelSpacing",
)
_SLICE_TAGS = tuple((keyword, Tag(keyword)) for keyword in _SLICE_KEYWORDS)


def _slice_values(dataset: Dataset) -> dict[str, Any]:
    """``{keyword: dataset.get(keyword)}`` of :data:`_SLICE_KEYWORDS`.

    An element pydicom has converted already (every element of a Dataset built in memory, as a
    pipeline's or highdicom's) is taken from the dataset's dict: ``Dataset.get`` costs 2-4 µs
    a look-up, 11 ms of a 300-image series (4 ms this way) at the start of a write, while the
    workers wait for their first block. Raw elements (read from a file) go through ``get``,
    which converts them.
    """
    elements = dataset._dict
    values: dict[str, Any] = {}
    for keyword, tag in _SLICE_TAGS:
        element = elements.get(tag)
        if element is None:
            values[keyword] = None
        elif isinstance(element, DataElement) and element.VR != "SQ":
            values[keyword] = element.value
        else:
            values[keyword] = dataset.get(keyword)
    return values


class _Names(Sequence[str]):
    """The images' descriptions for messages, made only when a message needs one."""

    def __init__(self, datasets: Sequence[Dataset]) -> None:
        self._datasets = datasets

    def __len__(self) -> int:
        return len(self._datasets)

    def __getitem__(self, index: Any) -> Any:
        if isinstance(index, slice):
            return [_describe(dataset) for dataset in self._datasets[index]]
        return _describe(self._datasets[index])


def _multiframe_series(dataset: Dataset) -> SourceSeries:
    """The frames of one multi-frame image (PS3.3 C.7.6.16: functional groups)."""
    _require(dataset, ("Rows", "Columns", "FrameOfReferenceUID"), "a SEG needs its geometry.")
    frames = int(dataset.get("NumberOfFrames", 1))
    shared = dataset.get("SharedFunctionalGroupsSequence", [Dataset()])[0]
    per_frame = dataset.get("PerFrameFunctionalGroupsSequence", [])
    if len(per_frame) != frames:
        lacking = [keyword for keyword in ("TotalPixelMatrixRows", "TotalPixelMatrixColumns")
                   if keyword not in dataset]
        if len(lacking) == 1 or dataset.get("SOPClassUID") == _WHOLE_SLIDE:
            # A slide's header (tiled: its frames have no functional groups of their own).
            raise SegmentationInputError(
                f"The source image ({_describe(dataset)}) is a tiled image without "
                f"{' and '.join(lacking)}: a slide's header needs its total pixel matrix size "
                "(PS3.3 C.8.12.4)."
            )
        raise SegmentationInputError(
            f"The multi-frame source image ({_describe(dataset)}) has {frames} frames but "
            f"{len(per_frame)} per-frame functional group items."
        )

    described = _describe(dataset)
    names = [f"frame {k + 1} of {described}" for k in range(frames)]
    geometry = []
    for sequence, keyword in (("PlanePositionSequence", "ImagePositionPatient"),
                              ("PlaneOrientationSequence", "ImageOrientationPatient"),
                              ("PixelMeasuresSequence", "PixelSpacing")):
        values = _frame_values(shared, per_frame, sequence, keyword, described)
        missing = next((k for k, value in enumerate(values) if value is None), None)
        if missing is not None:
            raise SegmentationInputError(
                f"Frame {missing + 1} of the multi-frame source image ({described}) has no "
                f"{sequence} > {keyword}: a SEG of a volume needs every frame's plane geometry."
            )
        geometry.append(_geometry(values, keyword, names))
    positions, orientations, spacings = geometry
    names = [f"frame {k + 1}" for k in range(frames)]
    _check_same(orientations, "ImageOrientationPatient", names)
    _check_same(spacings, "PixelSpacing", names)
    _check_distinct_positions(positions, orientations[0], names)
    rows, columns = _frame_size(dataset)
    return SourceSeries(
        datasets=(dataset,),
        multiframe=True,
        rows=rows,
        columns=columns,
        orientation=orientations[0],
        pixel_spacing=spacings[0],
        positions=positions,
        sop_instance_uids=(str(dataset.SOPInstanceUID),) * frames,
        frame_of_reference_uid=str(dataset.FrameOfReferenceUID),
    )


def functional_group_value(group: Dataset, sequence: str, keyword: str) -> Any:
    """``group``'s ``sequence`` > ``keyword`` (a shared or per-frame functional groups item),
    or None where it has none."""
    if sequence in group and group[sequence].value and keyword in group[sequence][0]:
        return group[sequence][0].get(keyword)
    return None


def frame_geometry(dataset: Dataset, frame: int, sequence: str, keyword: str) -> Any:
    """A multi-frame image's ``sequence`` > ``keyword`` of ``frame`` (from 0): its own
    functional groups', else the shared ones' (None where neither has it)."""
    groups = (dataset.PerFrameFunctionalGroupsSequence[frame],
              dataset.get("SharedFunctionalGroupsSequence", [Dataset()])[0])
    for group in groups:
        value = functional_group_value(group, sequence, keyword)
        if value is not None:
            return value
    return None


def _frame_values(shared: Dataset, per_frame: Sequence[Dataset], sequence: str, keyword: str,
                  described: str) -> list[Any]:
    """Each frame's ``sequence`` > ``keyword`` (as :func:`frame_geometry`): its own, else the
    shared one (None where neither has it). One in both places with other values is refused:
    PS3.3 C.7.6.16 puts each in one place, and the frames would be sorted by one and the SEG's
    header take the other (highdicom's takes the shared one)."""
    own = [functional_group_value(item, sequence, keyword) for item in per_frame]
    in_shared = functional_group_value(shared, sequence, keyword)
    if in_shared is None:
        return own
    try:
        expected = np.asarray(_numbers(in_shared), dtype=float)
    except (TypeError, ValueError):  # not numbers: _geometry says which frame, and how
        expected = None
    if expected is not None:  # else nothing to compare with
        for frame, value in enumerate(own):
            if value is None:
                continue
            try:
                values = np.asarray(_numbers(value), dtype=float)
            except (TypeError, ValueError):  # not numbers: _geometry says which frame, and how
                break
            if values.shape != expected.shape or not np.allclose(values, expected, rtol=0,
                                                                 atol=ORIENTATION_TOLERANCE):
                raise SegmentationInputError(
                    f"The multi-frame source image ({described}) has {sequence} > {keyword} "
                    f"{_listed(expected)} in its shared functional groups and {_listed(values)} in "
                    f"frame {frame + 1}'s own: a functional group is in one place or the other "
                    "(PS3.3 C.7.6.16), and which one holds is not clear. Keep the one that is true."
                )
    return [in_shared if value is None else value for value in own]


def _numbers(value: Any) -> list[Any]:
    """A DICOM value as a list of its numbers (one number as a list of one)."""
    return list(value) if isinstance(value, (list, tuple, MultiValue)) else [value]


def _frame_size(dataset: Dataset) -> tuple[int, int]:
    """Rows and Columns of the source images' frames, each at least 1 (PS3.3 C.7.6.3)."""
    size = (dataset.get("Rows"), dataset.get("Columns"))
    if not all(isinstance(v, int) and v >= 1 for v in size):
        raise SegmentationInputError(
            f"The source images' frames are {size[0]} x {size[1]} pixels (Rows x Columns); an "
            "image has at least one pixel (PS3.3 C.7.6.3): its header is damaged."
        )
    return int(size[0]), int(size[1])


def _check_same(values: np.ndarray, keyword: str, names: Sequence[str]) -> None:
    differs = np.flatnonzero(np.abs(values - values[0]).max(axis=1) > ORIENTATION_TOLERANCE)
    if differs.size:
        other = differs[0]
        raise SegmentationInputError(
            f"The source frames do not share one {keyword}: {names[0]} has "
            f"{_listed(values[0])}, {names[other]} has {_listed(values[other])}. A SEG of a "
            "volume needs frames of one orientation and pixel spacing; segment each stack "
            "separately (a localizer among a series' images: remove it)."
        )


def _listed(values: np.ndarray) -> str:
    return "[" + ", ".join(f"{float(v):g}" for v in values) + "]"


# How many numbers each geometry attribute holds (PS3.3 C.7.6.2).
_GEOMETRY_VALUES = {"ImagePositionPatient": 3, "ImageOrientationPatient": 6, "PixelSpacing": 2}


def _geometry(values: Sequence[Any], keyword: str, names: Sequence[str]) -> np.ndarray:
    """``(frames, n)`` numbers of a geometry attribute of each frame; a frame whose value is
    not ``n`` numbers is refused by name (numpy would say "inhomogeneous shape")."""
    count = _GEOMETRY_VALUES[keyword]
    try:
        array = np.array(values, dtype=float)
    except (TypeError, ValueError):
        array = None
    if array is not None and array.shape == (len(values), count) and np.isfinite(array).all():
        return array
    for index, value in enumerate(values):
        several = hasattr(value, "__len__") and not isinstance(value, (str, bytes))
        numbers = list(value) if several else [value]
        try:
            valid = len(numbers) == count and all(np.isfinite(float(v)) for v in numbers)
        except (TypeError, ValueError):
            valid = False
        if not valid:
            raise SegmentationInputError(
                f"The {keyword} of {names[index]} is {value!r}, not {count} numbers (PS3.3 "
                "C.7.6.2): a SEG of a volume needs each frame's plane geometry."
            )
    return np.array(values, dtype=float).reshape(len(values), count)


# Direction cosines of rows and columns closer to parallel than this leave no slice normal.
_NORMAL_MIN = 1e-3


def _check_distinct_positions(positions: np.ndarray, orientation: np.ndarray,
                              names: Sequence[str]) -> None:
    """Refuse frames at one position, an orientation without a normal, or frames in one plane.

    highdicom orders a volume's planes by their distance along the normal and refuses
    repeated distances ("Plane positions must not contain duplicates"): images side by side in
    one plane, or rows and columns of one direction, are no volume.
    """
    _, first, counts = np.unique(
        np.round(positions, 3), axis=0, return_index=True, return_counts=True
    )
    if (counts > 1).any():
        repeated = positions[first[np.argmax(counts > 1)]]
        holders = [
            names[k] for k in range(len(positions))
            if np.allclose(positions[k], repeated, atol=1e-3)
        ]
        raise SegmentationInputError(
            f"{len(holders)} source frames lie at the same position {_listed(repeated)}: "
            f"{', '.join(holders[:4])}. A volume has one frame per position; pass one image of each "
            "(a series with several acquisitions or echoes at each position is several volumes)."
        )
    normal = np.cross(orientation[:3], orientation[3:])
    length = float(np.linalg.norm(normal))
    if length < _NORMAL_MIN:
        raise SegmentationInputError(
            f"The frames' ImageOrientationPatient {_listed(orientation)} gives rows and columns "
            "one direction, so the frames have no slice normal; it holds two orthogonal unit "
            "vectors (PS3.3 C.7.6.2.1.1)."
        )
    distances = np.round(positions @ (normal / length), 3)
    _, first, counts = np.unique(distances, return_index=True, return_counts=True)
    if (counts > 1).any():
        at = distances[first[np.argmax(counts > 1)]]
        holders = [names[k] for k in range(len(positions)) if distances[k] == at]
        raise SegmentationInputError(
            f"{len(holders)} source frames lie in one plane ({at:g} mm along the slice normal) "
            f"at different positions: {', '.join(holders[:4])}. A SEG of a volume has one frame "
            "per slice; images side by side in one plane are not a volume (segment each alone)."
        )


def load_source_series(source_images: object) -> SourceSeries:
    """Read and check the headers of a source series or of one multi-frame image.

    Parameters
    ----------
    source_images
        A pydicom Dataset or path of one image, a sequence of them, or a folder holding one
        series (non-DICOM files, a DICOMDIR and SEGs in it are skipped). Files are read without pixel
        data, in parallel when there are many.

    Returns
    -------
    SourceSeries
        The headers and frame geometry, frames in the order given (a folder's images in
        slice order, along the normal, as ``SourceSeries.sort_index`` gives).

    Raises
    ------
    SegmentationTypeError
        If ``source_images`` is not one of the kinds above.
    SegmentationInputError
        If a file cannot be read, the images are not one series of one frame of reference, frame
        sizes, orientations or pixel spacings differ, a position is missing or repeated, an
        image is listed twice, or a multi-frame image comes with other images.
    """
    datasets = _gather(source_images)
    values = [_slice_values(ds) for ds in datasets]
    for dataset, found in zip(datasets, values):
        _require(dataset, ("SOPClassUID", "SOPInstanceUID"), "pass the DICOM header of each image.",
                 found)
        if is_tiled_image(dataset):
            raise SegmentationInputError(
                f"The source image ({_describe(dataset)}) is a tiled image; pass it alone (not in a "
                "series) to segment its total pixel matrix."
            )
    # An enhanced image keeps its geometry in functional groups, also with one frame; such an
    # image goes alone, as highdicom takes it ("Only one source image should be provided in
    # case images are multi-frame images").
    multiframe = [ds for ds, found in zip(datasets, values)
                  if int(found["NumberOfFrames"] or 1) > 1
                  or "PerFrameFunctionalGroupsSequence" in ds]
    if multiframe:
        if len(datasets) > 1:
            raise SegmentationInputError(
                f"{len(datasets)} source images were given, {len(multiframe)} of them multi-frame "
                f"images ({_describe(multiframe[0])}); pass one multi-frame image alone, or a "
                "series of single-frame images."
            )
        return _multiframe_series(datasets[0])

    uids = Counter(str(found["SOPInstanceUID"]) for found in values)
    repeated = [uid for uid, count in uids.items() if count > 1]
    if repeated:
        files = [getattr(ds, "filename", None) for ds, found in zip(datasets, values)
                 if str(found["SOPInstanceUID"]) == repeated[0]]
        where = (f" ({', '.join(map(str, files))})"
                 if all(isinstance(name, str) and name for name in files) else "")
        raise SegmentationInputError(
            f"The source image {repeated[0]} is given {uids[repeated[0]]} times{where}; pass "
            "each image once."
        )
    _one_value(values, "SeriesInstanceUID", "Pass the images of one series (for a folder: "
               "a folder holding one series).", datasets)
    for dataset, found in zip(datasets, values):
        # The SEG joins the study of its source images (highdicom copies it from the first).
        _require(dataset, ("StudyInstanceUID",), "the SEG joins its source images' study.",
                 found)
    _one_value(values, "StudyInstanceUID", "The SEG joins one study: pass the images of one "
               "series.", datasets)
    _one_value(values, "FrameOfReferenceUID", "A SEG's frames lie in one frame of reference.",
               datasets)
    _one_value(values, "SOPClassUID", "Pass the images of one series.", datasets)
    without_plane = [
        all(found[keyword] in (None, "")
            for keyword in ("ImagePositionPatient", "ImageOrientationPatient"))
        for found in values
    ]
    for dataset, found in zip(datasets, values):
        if all(without_plane) and str(found["SOPClassUID"]) not in _CROSS_SECTIONS:
            # No image with a plane in the patient, of a class whose IOD has no Image Plane
            # module (PS3.3 C.7.6.2): a projection image, such as DX, CR or MG, or a secondary
            # capture, whose SEG highdicom writes without geometry. (A CT image that lost its
            # geometry is said to lack it, below.)
            raise SegmentationInputError(
                f"The source image ({_describe(dataset)}) has no plane position or orientation "
                f"(SOP class {UID(str(found['SOPClassUID'])).name}), as a projection image (a "
                "radiograph) or a secondary capture has none. daskseg writes SEGs of "
                "cross-sections (CT, MR, PET series) and of tiled slides; use highdicom for "
                "other images."
            )
        _require(
            dataset,
            ("Rows", "Columns", "FrameOfReferenceUID", "ImagePositionPatient",
             "ImageOrientationPatient", "PixelSpacing"),
            "a SEG of a series needs each image's plane geometry (PS3.3 C.7.6.2).",
            found,
        )
    sizes = Counter((int(found["Rows"]), int(found["Columns"])) for found in values)
    if len(sizes) > 1:
        found_sizes = ", ".join(f"{r} x {c} ({n} images)" for (r, c), n in sizes.most_common())
        raise SegmentationInputError(
            f"The source images differ in size: {found_sizes}. A SEG's frames all have one size."
        )
    names = _Names(datasets)
    orientations = _geometry([found["ImageOrientationPatient"] for found in values],
                             "ImageOrientationPatient", names)
    spacings = _geometry([found["PixelSpacing"] for found in values], "PixelSpacing", names)
    positions = _geometry([found["ImagePositionPatient"] for found in values],
                          "ImagePositionPatient", names)
    _check_same(orientations, "ImageOrientationPatient", names)
    _check_same(spacings, "PixelSpacing", names)
    _check_distinct_positions(positions, orientations[0], names)
    instance_uids = [str(found["SOPInstanceUID"]) for found in values]
    if _is_folder(source_images):
        # A folder's files have no order that the caller gave (names sort as text, "10" before
        # "2", or are UIDs): its images are taken in slice order, as highdicom's sort_datasets,
        # ITK and dcmqi read a series, and as the reader orders frames by default.
        order = get_plane_sort_index(positions.tolist(), orientations[0].tolist())
        datasets = [datasets[k] for k in order]
        positions = positions[order]
        instance_uids = [instance_uids[k] for k in order]
    rows, columns = _frame_size(datasets[0])
    return SourceSeries(
        datasets=tuple(datasets),
        multiframe=False,
        rows=rows,
        columns=columns,
        orientation=orientations[0],
        pixel_spacing=spacings[0],
        positions=positions,
        sop_instance_uids=tuple(instance_uids),
        frame_of_reference_uid=str(values[0]["FrameOfReferenceUID"]),
    )
