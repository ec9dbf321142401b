"""Synthetic slides and masks for demonstrations, tests and benchmarks.

Nothing here needs data files: the source image is a VL Whole Slide Microscopy Image header
(metadata only, as daskseg reads it) and the mask is a lazy Dask array whose blocks are computed
independently from global pixel coordinates, so a 100k x 100k mask costs nothing until written.
"""

from __future__ import annotations

import datetime
from typing import Any

import dask.array as da
import highdicom as hd
import numpy as np
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.valuerep import format_number_as_ds
from pydicom.sequence import Sequence as DicomSequence
from pydicom.sr.codedict import codes
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, VLWholeSlideMicroscopyImageStorage

from daskseg.plan import block_location

__all__ = [
    "make_ct_series",
    "make_detailed_mask",
    "make_label_volume",
    "make_slide",
    "make_tissue_mask",
    "make_segment_descriptions",
]


def make_slide(
    rows: int,
    columns: int,
    *,
    tile_size: tuple[int, int] = (512, 512),
    pixel_spacing: float = 0.00025,
    origin: tuple[float, float] = (20.0, 30.0),
    study_instance_uid: str | None = None,
    pyramid_uid: str | None = None,
    series_instance_uid: str | None = None,
) -> Dataset:
    """Make the header of a VL Whole Slide Microscopy Image (no pixel data).

    Parameters
    ----------
    rows, columns : int
        Size of the total pixel matrix.
    tile_size : tuple of int
        Rows and Columns of one frame of the slide.
    pixel_spacing : float
        Pixel spacing in mm (0.00025 mm is 40x magnification).
    origin : tuple of float
        X and Y offsets of the total pixel matrix origin in the slide coordinate system (mm).
    study_instance_uid, pyramid_uid, series_instance_uid : str, optional
        UIDs to share between the levels of a synthetic pyramid; new ones by default.

    Returns
    -------
    pydicom.Dataset
        A TILED_FULL, RGB, 8-bit VL Whole Slide Microscopy Image header with file meta.

    Examples
    --------
    >>> source = make_slide(4096, 4096)
    >>> int(source.TotalPixelMatrixRows), int(source.NumberOfFrames)
    (4096, 64)
    """
    if rows < 1 or columns < 1:
        raise ValueError(f"A slide needs a positive size, got {rows} x {columns}.")
    tile_rows, tile_columns = tile_size
    sop_instance_uid = hd.UID()
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = VLWholeSlideMicroscopyImageStorage
    ds.file_meta.MediaStorageSOPInstanceUID = sop_instance_uid
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    today = datetime.date.today().strftime("%Y%m%d")

    ds.SOPClassUID = VLWholeSlideMicroscopyImageStorage
    ds.SOPInstanceUID = sop_instance_uid
    ds.StudyInstanceUID = study_instance_uid or hd.UID()
    ds.SeriesInstanceUID = series_instance_uid or hd.UID()
    ds.FrameOfReferenceUID = hd.UID()
    ds.PositionReferenceIndicator = "SLIDE_CORNER"
    ds.Modality = "SM"
    ds.ImageType = ["DERIVED", "PRIMARY", "VOLUME", "NONE"]
    ds.StudyDate = ds.ContentDate = today
    ds.StudyTime = ds.ContentTime = "120000"
    ds.AcquisitionDateTime = today + "120000"
    ds.AccessionNumber = "SYNTH-1"
    ds.StudyID = "SYNTH"
    ds.SeriesNumber = 1
    ds.InstanceNumber = 1
    ds.Manufacturer = "daskseg synthetic"
    ds.ManufacturerModelName = "synthetic slide"
    ds.DeviceSerialNumber = "0"
    ds.SoftwareVersions = "0"
    ds.ReferringPhysicianName = ""
    ds.PatientName = "Synthetic^Slide"
    ds.PatientID = "SYNTH-0001"
    ds.PatientBirthDate = ""
    ds.PatientSex = "O"
    ds.ContainerIdentifier = "SYNTH-SLIDE-1"
    ds.IssuerOfTheContainerIdentifierSequence = []
    container_type = Dataset()
    container_type.CodeValue = "433466003"
    container_type.CodingSchemeDesignator = "SCT"
    container_type.CodeMeaning = "Microscope slide"
    ds.ContainerTypeCodeSequence = [container_type]
    ds.AcquisitionContextSequence = []
    specimen = Dataset()
    specimen.SpecimenIdentifier = "SYNTH-SPECIMEN-1"
    specimen.SpecimenUID = hd.UID()
    specimen.IssuerOfTheSpecimenIdentifierSequence = []
    specimen.SpecimenPreparationSequence = []
    ds.SpecimenDescriptionSequence = [specimen]
    ds.VolumetricProperties = "VOLUME"
    ds.SpecimenLabelInImage = "NO"
    ds.FocusMethod = "AUTO"
    ds.ExtendedDepthOfField = "NO"
    ds.BurnedInAnnotation = "NO"
    ds.LossyImageCompression = "00"

    ds.Rows, ds.Columns = tile_rows, tile_columns
    ds.TotalPixelMatrixRows, ds.TotalPixelMatrixColumns = rows, columns
    ds.NumberOfFrames = (-(-rows // tile_rows)) * (-(-columns // tile_columns))
    ds.SamplesPerPixel = 3
    ds.PhotometricInterpretation = "RGB"
    ds.PlanarConfiguration = 0
    ds.BitsAllocated = ds.BitsStored = 8
    ds.HighBit = 7
    ds.PixelRepresentation = 0
    ds.DimensionOrganizationType = "TILED_FULL"
    dim_uid = hd.UID()
    org = Dataset()
    org.DimensionOrganizationUID = dim_uid
    ds.DimensionOrganizationSequence = [org]
    ds.TotalPixelMatrixFocalPlanes = 1
    ds.NumberOfOpticalPaths = 1
    ds.ImagedVolumeWidth = columns * pixel_spacing
    ds.ImagedVolumeHeight = rows * pixel_spacing
    ds.ImagedVolumeDepth = 0.01
    origin_item = Dataset()
    origin_item.XOffsetInSlideCoordinateSystem = format_number_as_ds(origin[0])
    origin_item.YOffsetInSlideCoordinateSystem = format_number_as_ds(origin[1])
    ds.TotalPixelMatrixOriginSequence = [origin_item]
    ds.ImageOrientationSlide = [0.0, -1.0, 0.0, -1.0, 0.0, 0.0]

    optical_path = Dataset()
    optical_path.OpticalPathIdentifier = "1"
    illumination = Dataset()
    illumination.CodeValue = "111744"
    illumination.CodingSchemeDesignator = "DCM"
    illumination.CodeMeaning = "Brightfield illumination"
    optical_path.IlluminationTypeCodeSequence = [illumination]
    color = Dataset()
    color.CodeValue = "414298005"
    color.CodingSchemeDesignator = "SCT"
    color.CodeMeaning = "Full Spectrum"
    optical_path.IlluminationColorCodeSequence = [color]
    ds.OpticalPathSequence = [optical_path]

    measures = Dataset()
    measures.SliceThickness = "0.01"
    measures.PixelSpacing = [
        format_number_as_ds(pixel_spacing),
        format_number_as_ds(pixel_spacing),
    ]
    frame_type = Dataset()
    frame_type.FrameType = ["DERIVED", "PRIMARY", "VOLUME", "NONE"]
    shared = Dataset()
    shared.PixelMeasuresSequence = [measures]
    shared.WholeSlideMicroscopyImageFrameTypeSequence = [frame_type]
    ds.SharedFunctionalGroupsSequence = DicomSequence([shared])
    if pyramid_uid is not None:
        ds.PyramidUID = pyramid_uid
    return ds


def make_ct_series(
    slices: int,
    rows: int,
    columns: int,
    *,
    pixel_spacing: tuple[float, float] = (0.8, 0.7),
    slice_spacing: float = 2.5,
    orientation: tuple[float, ...] = (1.0, 0.0, 0.0, 0.0, 1.0, 0.0),
    origin: tuple[float, float, float] = (-120.5, -98.25, -300.0),
    pixel_data: bool = False,
) -> list[Dataset]:
    """Make the headers of a CT series of single-frame images, in slice order.

    Parameters
    ----------
    slices, rows, columns : int
        Number of images and the size of each.
    pixel_spacing : tuple of float
        PixelSpacing (between rows, between columns) in mm.
    slice_spacing : float
        Distance between consecutive slices along row direction x column direction, in mm.
    orientation : tuple of float
        ImageOrientationPatient (row direction, column direction); oblique ones are fine.
    origin : tuple of float
        ImagePositionPatient of the first slice.
    pixel_data : bool
        Add 16-bit pixel data (a ramp), for tools that read the pixels.

    Returns
    -------
    list of pydicom.Dataset
        One CT Image header per slice, with file meta; one study, series and frame of reference.

    Examples
    --------
    >>> series = make_ct_series(4, 16, 16)
    >>> [float(ds.ImagePositionPatient[2]) for ds in series]
    [-300.0, -297.5, -295.0, -292.5]
    """
    row_direction = np.asarray(orientation[:3], dtype=float)
    column_direction = np.asarray(orientation[3:], dtype=float)
    normal = np.cross(row_direction, column_direction)
    study, series_uid, frame_of_reference = hd.UID(), hd.UID(), hd.UID()
    today = datetime.date.today().strftime("%Y%m%d")
    datasets = []
    for index in range(slices):
        ds = Dataset()
        uid = hd.UID()
        ds.file_meta = FileMetaDataset()
        ds.file_meta.MediaStorageSOPClassUID = CTImageStorage
        ds.file_meta.MediaStorageSOPInstanceUID = uid
        ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds.SOPClassUID = CTImageStorage
        ds.SOPInstanceUID = uid
        ds.StudyInstanceUID = study
        ds.SeriesInstanceUID = series_uid
        ds.FrameOfReferenceUID = frame_of_reference
        ds.PositionReferenceIndicator = ""
        ds.Modality = "CT"
        ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL"]
        ds.StudyDate = ds.ContentDate = ds.SeriesDate = today
        ds.StudyTime = ds.ContentTime = "120000"
        ds.AccessionNumber = "SYNTH-CT"
        ds.StudyID = "SYNTH"
        ds.SeriesNumber = 1
        ds.InstanceNumber = index + 1
        ds.Manufacturer = "daskseg synthetic"
        ds.ReferringPhysicianName = ""
        ds.PatientName = "Synthetic^CT"
        ds.PatientID = "SYNTH-CT-0001"
        ds.PatientBirthDate = ""
        ds.PatientSex = "O"
        ds.KVP = "120"
        position = np.asarray(origin, dtype=float) + index * slice_spacing * normal
        ds.ImagePositionPatient = [format_number_as_ds(float(v)) for v in position]
        ds.ImageOrientationPatient = [format_number_as_ds(float(v)) for v in orientation]
        ds.PixelSpacing = [format_number_as_ds(float(v)) for v in pixel_spacing]
        ds.SliceThickness = format_number_as_ds(float(slice_spacing))
        ds.Rows, ds.Columns = rows, columns
        ds.SamplesPerPixel = 1
        ds.PhotometricInterpretation = "MONOCHROME2"
        ds.BitsAllocated, ds.BitsStored, ds.HighBit = 16, 16, 15
        ds.PixelRepresentation = 1
        ds.RescaleIntercept, ds.RescaleSlope = "-1024", "1"
        if pixel_data:
            ramp = (np.arange(rows * columns, dtype=np.int16).reshape(rows, columns) + index)
            ds.PixelData = ramp.tobytes()
        datasets.append(ds)
    return datasets


def make_label_volume(
    slices: int, rows: int, columns: int, n_segments: int, *, seed: int = 0
) -> np.ndarray:
    """Make a label volume ``(slices, rows, columns)``: one box-shaped structure per segment.

    Each structure spans a few to about 60 slices, so a slice holds a handful of segments, as
    organ masks (TotalSegmentator's 117 structures, say) of a CT do.

    Examples
    --------
    >>> labels = make_label_volume(40, 64, 64, 5)
    >>> labels.shape, int(labels.max()) <= 5
    ((40, 64, 64), True)
    """
    rng = np.random.default_rng(seed)
    dtype = np.uint8 if n_segments < 256 else np.uint16
    labels = np.zeros((slices, rows, columns), dtype=dtype)
    height, width = max(1, rows // 10), max(1, columns // 10)
    for segment in range(1, n_segments + 1):
        depth = int(rng.integers(1, max(2, min(60, slices))))
        z = int(rng.integers(0, max(1, slices - depth)))
        y = int(rng.integers(0, max(1, rows - height)))
        x = int(rng.integers(0, max(1, columns - width)))
        labels[z : z + depth, y : y + height, x : x + width] = segment
    return labels


def _tissue_block(
    block: np.ndarray,
    n_segments: int,
    rows: int,
    columns: int,
    seed: int,
    stacked: bool,
    block_info: dict | None = None,
) -> np.ndarray:
    (r0, r1), (c0, c1) = block_location(block_info, None)[:2]
    rng = np.random.default_rng(seed)
    phases = rng.uniform(0, 2 * np.pi, 3)
    y = np.arange(r0, r1, dtype=np.float32)[:, None] / rows
    x = np.arange(c0, c1, dtype=np.float32)[None, :] / columns
    # An elliptic "tissue" region with wavy borders, and inside it bands of classes.
    radius = ((x - 0.5) / 0.42) ** 2 + ((y - 0.5) / 0.36) ** 2
    wobble = 0.08 * np.sin(23 * x + phases[0]) * np.cos(17 * y + phases[1])
    tissue = radius + wobble < 1.0
    field = np.sin(31 * x + 7 * y + phases[2]) + np.cos(13 * y - 11 * x) * 0.7
    classes = np.clip(((field + 1.7) / 3.4 * n_segments).astype(np.int16), 0, n_segments - 1) + 1
    labels = np.where(tissue, classes, 0).astype(np.uint8)
    if not stacked:
        return labels
    return (labels[..., None] == np.arange(1, n_segments + 1, dtype=np.uint8)).astype(np.uint8)


def make_tissue_mask(
    rows: int,
    columns: int,
    n_segments: int = 3,
    *,
    chunks: int | tuple[int, int] = 2048,
    stacked: bool = False,
    seed: int = 0,
) -> da.Array:
    """Make a lazy, tissue-like segmentation mask of any size.

    Parameters
    ----------
    rows, columns : int
        Shape of the mask (the slide's total pixel matrix).
    n_segments : int
        Number of segments (classes), at most 255.
    chunks : int or tuple of int
        Chunk size of the returned Dask array along rows and columns.
    stacked : bool
        If False, a ``uint8`` label image ``(rows, columns)`` with values ``0..n_segments``;
        if True, a ``(rows, columns, n_segments)`` stack of 0/1 planes.
    seed : int
        Seed of the pattern's phases.

    Returns
    -------
    dask.array.Array
        A lazy mask: an ellipse of "tissue" split into bands of segments, background outside.
    """
    if not 1 <= n_segments <= 255:
        raise ValueError(f"n_segments must be between 1 and 255, got {n_segments}.")
    chunk_rows, chunk_columns = (chunks, chunks) if isinstance(chunks, int) else chunks
    shape: tuple[int, ...] = (rows, columns)
    chunk_shape: tuple[int, ...] = (chunk_rows, chunk_columns)
    if stacked:
        shape += (n_segments,)
        chunk_shape += (n_segments,)
    template = da.empty(shape, chunks=chunk_shape, dtype=np.uint8)
    return template.map_blocks(
        _tissue_block,
        n_segments,
        rows,
        columns,
        seed,
        stacked,
        dtype=np.uint8,
        name=f"tissue-mask-{rows}x{columns}-{n_segments}-{seed}-{int(stacked)}",
    )


def _detailed_block(
    block: np.ndarray, n_segments: int, cell: int, seed: int, block_info: dict | None = None
) -> np.ndarray:
    (r0, r1), (c0, c1) = block_location(block_info, None)[:2]
    # A label per cell from a hash of its global position (splitmix64's finaliser), so blocks
    # are independent and the mask does not depend on the chunking.
    i = (np.arange(r0, r1, dtype=np.uint64) // np.uint64(cell))[:, None]
    j = (np.arange(c0, c1, dtype=np.uint64) // np.uint64(cell))[None, :]
    with np.errstate(over="ignore"):
        h = i * np.uint64(0x9E3779B97F4A7C15) + j * np.uint64(0xBF58476D1CE4E5B9)
        h = h + np.uint64(seed) * np.uint64(0x94D049BB133111EB)
        h ^= h >> np.uint64(30)
        h *= np.uint64(0xBF58476D1CE4E5B9)
        h ^= h >> np.uint64(27)
        h *= np.uint64(0x94D049BB133111EB)
        h ^= h >> np.uint64(31)
    return (h % np.uint64(n_segments + 1)).astype(np.uint8)


def make_detailed_mask(
    rows: int,
    columns: int,
    n_segments: int = 5,
    *,
    chunks: int | tuple[int, int] = 2048,
    cell: int = 16,
    seed: int = 0,
) -> da.Array:
    """Make a lazy label mask with detail everywhere: random labels in ``cell``-pixel squares.

    Every tile holds several segments and background, so no frame is empty or uniform: the
    hardest case for a writer (nothing to skip or reuse) and for a codec.

    Parameters
    ----------
    rows, columns : int
        Shape of the mask.
    n_segments : int
        Labels are drawn from ``0..n_segments`` (0 is background), at most 255.
    chunks : int or tuple of int
        Chunk size of the returned Dask array along rows and columns.
    cell : int
        Side of the squares of one label, in pixels.
    seed : int
        Seed of the labels.

    Returns
    -------
    dask.array.Array
        A lazy ``uint8`` label image ``(rows, columns)``, the same whatever ``chunks``.

    Examples
    --------
    >>> mask = make_detailed_mask(64, 64, 3, chunks=32)
    >>> bool((mask[:16, :16] == mask[0, 0]).all()), int(mask.max()) <= 3
    (True, True)
    """
    if not 1 <= n_segments <= 255:
        raise ValueError(f"n_segments must be between 1 and 255, got {n_segments}.")
    chunk_rows, chunk_columns = (chunks, chunks) if isinstance(chunks, int) else chunks
    template = da.empty((rows, columns), chunks=(chunk_rows, chunk_columns), dtype=np.uint8)
    return template.map_blocks(
        _detailed_block, n_segments, cell, seed, dtype=np.uint8,
        name=f"detailed-mask-{rows}x{columns}-{n_segments}-{cell}-{seed}",
    )


def make_segment_descriptions(
    n_segments: int,
    *,
    segmentation_type: str = "BINARY",
    labels: list[str] | None = None,
) -> list[hd.seg.SegmentDescription]:
    """Make ``n_segments`` highdicom segment descriptions ("Tissue" category, numbered 1..n).

    Parameters
    ----------
    n_segments : int
        How many segments.
    segmentation_type : str
        The SEG's type; LABELMAP segments get a distinct display colour each, as highdicom
        requires for label maps with more than one segment.
    labels : list of str, optional
        Segment labels; "Segment 1", "Segment 2", ... by default.

    Returns
    -------
    list of highdicom.seg.SegmentDescription
    """
    labels = labels or [f"Segment {i}" for i in range(1, n_segments + 1)]
    if len(labels) != n_segments:
        raise ValueError(f"Got {len(labels)} labels for {n_segments} segments.")
    algorithm = hd.AlgorithmIdentificationSequence(
        name="daskseg synthetic",
        version="1.0",
        family=codes.cid7162.ArtificialIntelligence,
    )
    descriptions = []
    for number, label in enumerate(labels, start=1):
        kwargs: dict[str, Any] = {}
        if segmentation_type.upper() == "LABELMAP":
            hue = (number * 0.61803398875) % 1.0
            kwargs["display_color"] = hd.color.CIELabColor(
                60.0, 80 * np.cos(6.28 * hue), 80 * np.sin(6.28 * hue)
            )
        descriptions.append(
            hd.seg.SegmentDescription(
                segment_number=number,
                segment_label=label,
                segmented_property_category=codes.SCT.Tissue,
                segmented_property_type=codes.SCT.Tissue,
                algorithm_type=hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC,
                algorithm_identification=algorithm,
                **kwargs,
            )
        )
    return descriptions
