"""The SEG writer: :func:`write_segmentation`, wiring its parts together.

1. Check every input on the client, before any work reaches the cluster (``_inputs``).
2. Build the header with highdicom on a one-tile proxy (``_header``).
3. Encode blocks of whole tiles on the workers and spool the frames as they arrive (``_spool``).
4. Write header, per-frame items and Pixel Data with its offset tables to a temporary file, and
   rename it into place; on any error remove every temporary file (``_file``).
"""

from __future__ import annotations

import dataclasses
import math
import os
import pathlib
import warnings
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import highdicom as hd
import numpy as np
from pydicom.dataset import Dataset
from pydicom.uid import ExplicitVRLittleEndian

from daskseg import _inputs
from daskseg._codecs import ALLOWED_TRANSFER_SYNTAXES
from daskseg._file import check_native_size, write_file
from daskseg._header import bits_allocated, finish_header, segmentation_header
from daskseg._series import is_volume_source
from daskseg._source import load_source_image
from daskseg._spool import encode_tasks, encoded_frames, numpy_encode_tasks, spool_prefix
from daskseg._version import __version__
from daskseg.errors import SegmentationInputError
from daskseg.plan import (MAX_BLOCK_BYTES, FrameSpec, TileGrid, label_numbers,
                          writer_block_chunks)

if TYPE_CHECKING:
    from distributed import Client

__all__ = ["ALLOWED_TRANSFER_SYNTAXES", "write_segmentation"]

# Options that place the mask in the slide's coordinates themselves, so its shape need not be
# the source's total pixel matrix.
_GEOMETRY_OPTIONS = ("pixel_measures", "plane_positions", "plane_orientation")


def _warn_if_chunks_split(chunk: tuple[int, int], block: tuple[int, int],
                          bytes_per_pixel: int, from_zarr: bool) -> None:
    """Warn when the mask's chunks are too large for one block: read again for each block
    (``from_zarr``: read in the writer's blocks directly), else computed once and held."""
    reads = math.ceil(chunk[0] / block[0]) * math.ceil(chunk[1] / block[1])
    if reads > 1 and chunk[0] * chunk[1] * bytes_per_pixel > MAX_BLOCK_BYTES:
        from dask.array.core import PerformanceWarning

        # A Dask chunk is held by the worker that made it until every task that needs it
        # has run: with chunks of whole planes, every block needs every chunk.
        cost, gain = ((f"a chunk read by several blocks is read {reads} times", "to read it once")
                      if from_zarr else
                      (f"a chunk is computed once and held in memory until the last of the {reads} "
                       "blocks that need it is written, so many chunks may be held at once",
                       "for a write's memory to stay within a few blocks"))
        warnings.warn(
            f"The mask's chunks of {chunk[0]} x {chunk[1]} pixels hold "
            f"{chunk[0] * chunk[1] * bytes_per_pixel / 2**20:.0f} MiB with all its planes, more "
            f"than a writer's block may hold ({MAX_BLOCK_BYTES // 2**20} MiB): it is written in "
            f"blocks of {block[0]} x {block[1]} pixels, and {cost}. Store the mask in chunks of "
            f"at most {block[0]} x {block[1]} pixels (a stack: per plane), or as a label image, "
            f"{gain}.",
            PerformanceWarning,
            stacklevel=3,
        )


def write_segmentation(
    mask: _inputs.MaskLike,
    source_image: Dataset | str | os.PathLike,
    segment_descriptions: Sequence[hd.seg.SegmentDescription],
    path: str | os.PathLike,
    *,
    segmentation_type: str | hd.seg.SegmentationTypeValues = "BINARY",
    transfer_syntax_uid: str = ExplicitVRLittleEndian,
    tile_size: Sequence[int] | int | None = None,
    dimension_organization_type: str | hd.DimensionOrganizationTypeValues | None = None,
    omit_empty_frames: bool | None = None,
    max_fractional_value: int = 255,
    fractional_type: str | hd.seg.SegmentationFractionalTypeValues = "PROBABILITY",
    series_instance_uid: str | None = None,
    series_number: int = 1,
    sop_instance_uid: str | None = None,
    instance_number: int = 1,
    manufacturer: str = "daskseg",
    manufacturer_model_name: str = "daskseg",
    software_versions: str | Sequence[str] | None = None,
    device_serial_number: str = "1",
    content_label: str | None = None,
    content_description: str | None = None,
    content_creator_name: str | None = None,
    series_description: str | None = None,
    header_attributes: Mapping[str, Any] | None = None,
    label_values: Sequence[int] | None = None,
    use_extended_offset_table: bool | None = None,
    client: Client | None = None,
    overwrite: bool = False,
    progress: bool = False,
    **highdicom_options: Any,
) -> pathlib.Path:
    """Write a DICOM Segmentation of a tiled image, or of a series, from a mask of any size.

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
        for source image k in the order given (as highdicom; a folder's images in highdicom's
        slice order, ``hd.spatial.sort_datasets``: head to feet for an axial series, as
        :func:`read_segmentation` gives them back), or the path of a NIfTI file
        (``.nii``, ``.nii.gz``; extra ``nifti``) or an NRRD file (``.nrrd``, ``.nhdr``; extra
        ``nrrd``), matched to the series by its geometry.
    source_image : pydicom.Dataset, str, os.PathLike or a sequence of them
        The slide (or its header), or the path of its DICOM file (read without pixel data).
        The mask's shape must equal its TotalPixelMatrixRows x TotalPixelMatrixColumns. Or a
        series of single-frame images (CT, MR, PET...) or one multi-frame image: Datasets,
        paths, or a folder holding one series, read without pixel data, in parallel.
    segment_descriptions : sequence of highdicom.seg.SegmentDescription
        One description per segment, numbered 1..n.
    path : str or os.PathLike
        The file to write. Its folder must exist.
    segmentation_type : {"BINARY", "FRACTIONAL", "LABELMAP"} or highdicom.seg.SegmentationTypeValues
        As highdicom's ``segmentation_type``.
    transfer_syntax_uid : str
        Explicit or Implicit VR Little Endian (native), JPEG 2000 Lossless, JPEG-LS Lossless or
        RLE Lossless, as highdicom allows them for the type, or High-Throughput JPEG 2000
        Lossless (1.2.840.10008.1.2.4.201) for LABELMAP and FRACTIONAL (see
        ``ALLOWED_TRANSFER_SYNTAXES``).
    tile_size : int or (int, int), optional
        Rows and columns of a frame; the source's Rows x Columns by default.
    dimension_organization_type : {"TILED_SPARSE", "TILED_FULL", "3D", None} or highdicom's enum
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
    series_description : str, optional
        The SEG series' SeriesDescription (at most 64 characters), which highdicom's
        Segmentation does not take; what viewers list the series by.
    header_attributes : mapping, optional
        Further attributes of the SEG's header by DICOM keyword, such as those of the Clinical
        Trial Series module or ``BodyPartExamined`` (dcmqi's metadata carries them), set as
        given after highdicom's; a value the header holds already (from the source or
        another option) cannot be changed (found as the header is made, while the blocks
        encode, which it stops), and sequences, the attributes of the image, frames and
        pixel data, and DimensionOrganizationType are made by the writer.
    label_values : sequence of int, optional
        BINARY and FRACTIONAL from a label mask: the value of each segment in the mask, in the
        order of ``segment_descriptions`` (numbered 1..n), where it is not the segment's
        number; as dcmqi's ``labelID``, which it renumbers 1..n the same way (dcmqi also leaves
        out labelIDs absent from the mask; here such a segment stays, empty). A label mask
        ``{0, 5, 12}`` with ``label_values=[5, 12]`` gives segments 1 and 2. Every non-zero
        value of the mask must be one of them. An integer mask only.
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
        For inputs that cannot make a valid SEG: daskseg's own checks before any work is sent
        to the cluster, highdicom's (on the header, built while the blocks encode) as soon as
        it refuses, values from the block that holds them; nothing is left at ``path``.
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
    _inputs.check_flags(overwrite=overwrite, progress=progress)
    _inputs.check_numbers(series_number=series_number, instance_number=instance_number)
    _inputs.check_uids(series_instance_uid=series_instance_uid, sop_instance_uid=sop_instance_uid,
                       pyramid_uid=highdicom_options.get("pyramid_uid"))
    _inputs.check_software_versions(software_versions)
    destination = _inputs.check_destination(path, overwrite)
    volume = is_volume_source(source_image)
    options = _inputs.parse_options(segmentation_type, transfer_syntax_uid,
                                    dimension_organization_type, omit_empty_frames,
                                    max_fractional_value, use_extended_offset_table, volume=volume)
    numbers = _inputs.segment_numbers(segment_descriptions, options.segmentation_type)
    if series_description is not None:
        # LO (PS3.5 6.2): one value of at most 64 characters, no backslash (it separates
        # values), no control characters (ESC neither, which LO allows for code extensions).
        if (not isinstance(series_description, str) or "\\" in series_description
                or "\x1b" in series_description
                or _inputs.text_problem("LO", series_description) is not None):
            raise SegmentationInputError(
                "series_description is one text of at most 64 characters without a backslash "
                f"or control characters (LO, PS3.5 6.2), not {series_description!r}."
            )
        options = dataclasses.replace(options, series_description=series_description)
    if content_creator_name is not None:
        _inputs.check_person_name(content_creator_name, "content_creator_name")
    attributes = _inputs.parse_header_attributes(header_attributes)
    if attributes:
        options = dataclasses.replace(options, header_attributes=attributes)
    values = _inputs.parse_label_values(label_values, numbers, options.segmentation_type)
    if values:
        options = dataclasses.replace(options, label_values=values)
    # highdicom's tile_pixel_array says whether a slide's mask is its total pixel matrix (True)
    # or its frames: daskseg takes the total pixel matrix of a slide, a series' frames.
    whole_matrix = highdicom_options.pop("tile_pixel_array", None)
    if whole_matrix is not None and bool(whole_matrix) == volume:
        raise SegmentationInputError(
            f"tile_pixel_array={whole_matrix!r}: daskseg takes "
            + ("a series' mask as its frames (leave it out, or False)." if volume else
               "a slide's mask as its total pixel matrix, as highdicom with "
               "tile_pixel_array=True (leave it out, or True).")
        )
    hd_options: dict[str, Any] = dict(
        segmentation_type=options.segmentation_type,
        segment_descriptions=segment_descriptions,
        series_instance_uid=series_instance_uid or hd.UID(),
        series_number=series_number,
        sop_instance_uid=sop_instance_uid or hd.UID(),
        instance_number=instance_number,
        manufacturer=manufacturer,
        manufacturer_model_name=manufacturer_model_name,
        software_versions=(f"daskseg {__version__}" if software_versions is None
                           else software_versions),
        device_serial_number=device_serial_number,
        transfer_syntax_uid=options.transfer_syntax_uid,
        dimension_organization_type=options.dimension_organization_type,
        max_fractional_value=max_fractional_value,
        fractional_type=fractional_type,
        content_label=content_label,
        content_description=content_description,
        content_creator_name=content_creator_name,
        **highdicom_options,
    )
    if volume:
        from daskseg._volume import write_volume_segmentation  # it imports the writer's parts

        if tile_size is not None:
            raise SegmentationInputError(
                "tile_size is for tiled images; a SEG of a series has frames of its images' size."
            )
        return write_volume_segmentation(mask, source_image, destination, options, hd_options,
                                         client=client, overwrite=overwrite, progress=progress)
    if (isinstance(source_image, (list, tuple)) and len(source_image) == 1):
        source_image = source_image[0]  # [slide], as highdicom's source_images
    source = load_source_image(source_image)
    tile = _inputs.tile_size(tile_size, source)
    _inputs.check_tile_for_codec(tile, options.transfer_syntax_uid)

    geometry_given = any(key in highdicom_options for key in _GEOMETRY_OPTIONS)
    expected = (int(source.TotalPixelMatrixRows), int(source.TotalPixelMatrixColumns))
    # Once for the mask's array and its blocks (a memory:// store is copied), not in each.
    visible = _inputs.worker_visible(mask)
    array, stacked = _inputs.normalize_mask(
        _inputs.as_dask_array(visible), len(numbers), None if geometry_given else expected
    )
    if not geometry_given and tuple(array.shape[:2]) != expected:
        raise SegmentationInputError(
            f"The mask has shape {tuple(array.shape[:2])} but the source's total pixel matrix "
            f"is {expected[0]} x {expected[1]}; the mask must cover it pixel for pixel."
        )
    grid = TileGrid(int(array.shape[0]), int(array.shape[1]), *tile)
    _inputs.check_label_values_mask(options, stacked, array.dtype)

    spec = FrameSpec(
        segmentation_type=options.segmentation_type,
        n_segments=len(numbers),
        stacked=stacked,
        tile_rows=tile[0],
        tile_columns=tile[1],
        transfer_syntax_uid=str(options.transfer_syntax_uid),
        bits_allocated=bits_allocated(options.segmentation_type, numbers[-1]),
        max_fractional_value=options.max_fractional_value,
        omit_empty_frames=options.omit_empty_frames,
        label_numbers=options.label_values or label_numbers(numbers),
    )
    check_native_size(spec, grid)

    # Blocks near the mask's own chunks keep rechunking cheap; an in-memory mask has none.
    in_memory = isinstance(mask, np.ndarray)
    hint = (2048, 2048) if in_memory else (array.chunks[0][0], array.chunks[1][0])
    bytes_per_pixel = array.dtype.itemsize * (array.shape[2] if stacked else 1)
    chunks = writer_block_chunks(grid, spec.n_channels, hint, bytes_per_pixel)
    prefix = spool_prefix(destination)
    if in_memory:
        tasks = numpy_encode_tasks(np.asarray(mask).reshape(array.shape), *chunks, spec,
                                   spool_prefix=prefix)
    else:
        blocks = _inputs.in_blocks(visible, array, (*chunks, *array.shape[2:]))
        _warn_if_chunks_split(hint, (chunks[0][0], chunks[1][0]), bytes_per_pixel,
                              from_zarr=blocks.name.startswith("from-zarr-"))
        tasks = encode_tasks(blocks, spec, prefix)

    shape = (spec.n_channels, grid.n_tile_rows, grid.n_tile_columns)
    # highdicom builds the header while the workers encode; if it refuses the inputs, or
    # header_attributes conflict with it, the encoding stops.
    def build_header() -> Dataset:
        header = segmentation_header(source, stacked, array.dtype, grid, hd_options)
        finish_header(header, spec, options.series_description, options.header_attributes)
        return header

    with encoded_frames(client, tasks, destination, shape, progress, build_header, prefix,
                        mask=visible) as (spool, nonempty, overlap, header):
        if header.get("SegmentsOverlap") != "UNDEFINED":
            header.SegmentsOverlap = "YES" if overlap else "NO"
        write_file(destination, header, spool, spec, grid, options.tiled_full, nonempty,
                   highdicom_options, use_extended_offset_table, overwrite)
    return destination
