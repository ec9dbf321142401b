"""The write path for SEGs of volumes: a source series (or multi-frame image) and its mask.

A volume SEG's frames are the mask's slices, one per source frame and segment (PS3.3 C.8.20.2).
The engine of the tiled writer does the work unchanged: the mask, its slices in the order
highdicom stores them, is seen as one tall image of ``slices * rows`` by ``columns`` cut into
tiles of one slice, so tile row ``p`` is the ``p``-th plane of the SEG. Only the header and the
per-frame functional groups differ: the header comes from highdicom's ``Segmentation`` on a
proxy (the first plane's source image and a one-slice mask), the per-frame items are serialized
per (segment, plane) from parts encoded once per plane and once per segment.
"""

from __future__ import annotations

from typing import Any

import dask.array as da

from daskseg._nifti import is_nifti_path, match_to_series, read_nifti
from daskseg._series import SourceSeries
from daskseg.errors import SegmentationInputError, SegmentationTypeError

__all__ = ["volume_mask"]


def volume_mask(
    mask: Any, series: SourceSeries, n_segments: int, as_dask_array: Any
) -> tuple[da.Array, bool]:
    """The mask as ``(frames, rows, columns[, segments])`` in the series' order, and whether stacked.

    Mask frame ``k`` belongs to source frame ``k`` in the order given (as in highdicom), except
    for a NIfTI file, which carries its geometry and is matched to the series by it.
    ``as_dask_array`` wraps the other kinds of mask (Dask, Zarr, numpy) without reading them.

    Raises
    ------
    SegmentationInputError
        If the mask's shape does not fit the series and segments, or a NIfTI file's geometry
        does not match the series'.
    SegmentationTypeError
        If its values are neither boolean, integer nor floating point, or a label volume is
        floating point.
    """
    frames, rows, columns = series.number_of_frames, series.rows, series.columns
    if is_nifti_path(mask):
        array, affine = read_nifti(mask)
        array = match_to_series(array, affine, series)
    else:
        array = as_dask_array(mask)
        # One image: its mask may come without the frame axis, as in highdicom.
        if frames == 1 and (
            array.ndim == 2 or (array.ndim == 3 and array.shape == (rows, columns, n_segments))
        ):
            array = array[None]
    expected = (frames, rows, columns)
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
    kind = array.dtype.kind
    if kind not in "buif":
        raise SegmentationTypeError(
            f"The mask's dtype {array.dtype} is not boolean, integer or floating point."
        )
    if kind == "f" and not stacked:
        raise SegmentationTypeError(
            "A label volume must hold integers (segment numbers), not floating point values; "
            "stack one volume per segment on the last axis for fractional masks."
        )
    return array, stacked
