"""NRRD masks (``.nrrd``, ``.nhdr`` with detached data), matched voxel for voxel to a source series.

An NRRD file places sample ``(i, j, k)`` (``i`` fastest in the file) at ``space origin + i d_0 +
j d_1 + k d_2``, where ``d_a`` is the ``space directions`` vector of axis ``a``, in the frame
named by ``space`` (NRRD format 5, "space" and "space directions"; 3D Slicer and dcmqi write
left-posterior-superior). The array is read with pynrrd in its default Fortran index order, so
its axis ``a`` is the file's axis ``a`` and the affine's column ``a`` is ``d_a``; the affine is
then turned into LPS+ (DICOM, PS3.3 C.7.6.2.1.1) and matched to the series by the same rules
as a NIfTI file (:func:`daskseg._nifti.match_to_series`).
"""

from __future__ import annotations

import os
import pathlib
from typing import Any

import dask.array as da
import numpy as np

from daskseg._nifti import match_to_series
from daskseg._series import SourceSeries
from daskseg.errors import MissingDependencyError, SegmentationInputError

__all__ = ["is_nrrd_path", "match_nrrd_to_series", "read_nrrd"]

_SUFFIXES = (".nrrd", ".nhdr")
# The patient spaces of the NRRD format that masks of DICOM series come in (long and short
# names, compared without case), each with the matrix that turns its coordinates into LPS+.
_LPS = "left-posterior-superior"
_RAS = "right-anterior-superior"
_SPACES = {_LPS: _LPS, "lps": _LPS, _RAS: _RAS, "ras": _RAS}
_TO_LPS = {_LPS: np.eye(4), _RAS: np.diag([-1.0, -1.0, 1.0, 1.0])}


def is_nrrd_path(mask: object) -> bool:
    """Whether ``mask`` is the path of an NRRD file or detached header (by its name)."""
    return isinstance(mask, (str, os.PathLike)) and str(mask).lower().endswith(_SUFFIXES)


def _directions(value: Any) -> list[np.ndarray | None]:
    """One vector per axis, None for a non-spatial axis (pynrrd gives NaN rows, or Nones)."""
    rows: list[np.ndarray | None] = []
    for row in value:
        vector = None if row is None else np.asarray(row, dtype=float)
        rows.append(None if vector is None or np.isnan(vector).all() else vector)
    return rows


def read_nrrd(path: str | os.PathLike) -> tuple[np.ndarray, np.ndarray, str]:
    """Return an NRRD file's array ``(i, j, k[, segments])``, its affine in LPS+ and its space
    (the long name, left-posterior-superior or right-anterior-superior).

    The whole array is read into memory (pynrrd reads every encoding that way). A fourth,
    non-spatial axis (``space directions`` "none", as 3D Slicer writes one plane per segment)
    is moved last.

    Raises
    ------
    MissingDependencyError
        If pynrrd is not installed, naming the extra that installs it.
    SegmentationInputError
        If the file is missing, not NRRD, or has no patient geometry (``space`` LPS or RAS,
        ``space directions`` and ``space origin`` of three spatial axes).
    """
    try:
        import nrrd
    except ImportError as error:
        raise MissingDependencyError(
            "Reading NRRD masks needs pynrrd: pip install 'daskseg[nrrd]'."
        ) from error
    path = pathlib.Path(path)
    if not path.is_file():
        raise SegmentationInputError(f"The mask {path} does not exist.")
    try:
        # Fortran order: array axis a is the header's axis a (sizes, space directions).
        array, header = nrrd.read(str(path), index_order="F")
    except (nrrd.NRRDError, OSError, ValueError) as error:
        raise SegmentationInputError(f"Could not read the mask {path} as NRRD: {error}") from error
    missing = [field for field in ("space", "space directions", "space origin")
               if field not in header]
    if missing:
        raise SegmentationInputError(
            f"The NRRD mask {path} has no {', no '.join(repr(f) for f in missing)} field, so "
            "its voxels have no place in the patient: write it with its geometry (as 3D Slicer "
            "does: space left-posterior-superior, space directions, space origin)."
        )
    space = _SPACES.get(str(header["space"]).lower())
    if space is None:
        raise SegmentationInputError(
            f"The NRRD mask {path} is in space {header['space']!r}; only the patient spaces "
            f"{_LPS} (LPS) and {_RAS} (RAS) can be matched to a DICOM series."
        )
    directions = _directions(header["space directions"])
    spatial = [axis for axis, vector in enumerate(directions) if vector is not None]
    other = [axis for axis, vector in enumerate(directions) if vector is None]
    if array.ndim not in (3, 4) or len(spatial) != 3 or len(directions) != array.ndim:
        raise SegmentationInputError(
            f"The NRRD mask {path} has {array.ndim} axes {tuple(array.shape)}, {len(spatial)} "
            "of them spatial; expected a label volume of three spatial axes, or one more "
            "non-spatial axis (space directions 'none') of one volume per segment."
        )
    origin = np.asarray(header["space origin"], dtype=float)
    vectors = np.array([directions[axis] for axis in spatial])
    if origin.shape != (3,) or vectors.shape != (3, 3) or not (
        np.isfinite(origin).all() and np.isfinite(vectors).all()
    ):
        raise SegmentationInputError(
            f"The NRRD mask {path} has space origin {origin.tolist()} and space directions "
            f"{vectors.tolist()}; expected three finite coordinates each."
        )
    affine = np.eye(4)
    affine[:3, :3] = vectors.T  # column a: one step along axis a
    affine[:3, 3] = origin
    if other:
        array = np.moveaxis(array, other[0], -1)
    segments = _slicer_segments(header)
    if segments is not None:
        array = _slicer_mask(array, segments, path)
    return array, _TO_LPS[space] @ affine, space


def _slicer_segments(header: dict[str, Any]) -> list[tuple[int, int]] | None:
    """3D Slicer's segments (``SegmentN_Layer``, ``SegmentN_LabelValue``) in their order, or
    None for a file without them."""
    segments: list[tuple[int, int]] = []
    while f"Segment{len(segments)}_LabelValue" in header:
        n = len(segments)
        try:
            segments.append((int(header.get(f"Segment{n}_Layer", 0)),
                             int(header[f"Segment{n}_LabelValue"])))
        except ValueError:
            return None  # not Slicer's numbers: the file's values are taken as they are
    return segments or None


def _slicer_mask(array: np.ndarray, segments: list[tuple[int, int]],
                 path: pathlib.Path) -> np.ndarray:
    """The mask of a Slicer segmentation with segment k (in Slicer's order) as label k + 1, or
    as plane k: Slicer stores segment k as the value ``LabelValue`` of layer ``Layer``, several
    segments to a layer and overlapping ones in more layers (a fourth axis)."""
    layers = array.shape[3] if array.ndim == 4 else 1
    if any(not 0 <= layer < layers or value < 1 for layer, value in segments):
        raise SegmentationInputError(
            f"The NRRD mask {path} names segments {segments} (layer, label value) that its "
            f"{layers} layer(s) cannot hold."
        )
    if array.ndim == 3:
        values = [value for _, value in segments]
        if values == list(range(1, len(values) + 1)):
            return array
        found = np.unique(array)
        unnamed = sorted(set(found.tolist()) - {0, *values})
        if unnamed:
            raise SegmentationInputError(
                f"The NRRD mask {path} holds the value {unnamed[0]}, which none of its segments "
                f"(Segment*_LabelValue {values}) is."
            )
        lookup = np.zeros(int(max(found.max(), *values)) + 1, dtype=np.uint16)
        lookup[values] = np.arange(1, len(values) + 1)
        return lookup[array.astype(np.intp, copy=False)]
    if segments == [(layer, 1) for layer in range(layers)]:
        return array  # one segment a layer, as value 1: the planes already
    return np.stack([array[..., layer] == value for layer, value in segments], axis=-1)


def match_nrrd_to_series(path: str | os.PathLike, series: SourceSeries) -> da.Array | np.ndarray:
    """The NRRD file's mask as ``(frames, rows, columns[, segments])`` in the series' order.

    Raises
    ------
    MissingDependencyError
        If pynrrd is not installed.
    SegmentationInputError
        If the file has no patient geometry, or a source pixel is not a voxel of the file (see
        :func:`daskseg._nifti.match_to_series`).
    """
    array, affine, space = read_nrrd(path)
    other = _RAS if space == _LPS else _LPS
    return match_to_series(
        array, affine, series, kind="NRRD",
        wrong_convention=f"its space were {other} rather than {space}: the file's space field "
                         "does not match its coordinates; fix it",
    )
