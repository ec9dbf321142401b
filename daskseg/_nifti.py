"""Masks that carry their own geometry (NIfTI files), matched voxel for voxel to a source series.

A NIfTI file maps voxel indices ``(i, j, k)`` to RAS+ millimetres by its affine; DICOM positions
are LPS+ (PS3.3 C.7.6.2.1.1). Matching needs no resampling: every source frame's pixels must be
voxels of the file, its rows and columns along two of the file's axes (either way), each frame at
one integer index of the third axis, and every slice of the file used by exactly one frame. Then
the file is transposed, flipped and its slices taken in the frames' order. Anything else (other
spacing, a shift, a rotation, slices between slices, extra slices) is refused, saying how: a
misplaced SEG is worse than none.
"""

from __future__ import annotations

import os
import pathlib
import traceback
from typing import Any

import dask.array as da
import numpy as np
from pydicom.dataset import Dataset

from daskseg._file import file_beside, naming_a_full_disk
from daskseg._series import SourceSeries, load_source_series
from daskseg._volframes import referenced_instances
from daskseg.errors import MissingDependencyError, SegmentationFileError, SegmentationInputError

__all__ = ["is_nifti_path", "match_to_series", "read_nifti", "volume_to_nifti"]

_SUFFIXES = (".nii", ".nii.gz")
# How far (in voxels) a source pixel may lie from a voxel centre of the file: NIfTI stores its
# affine as float32 (about 7 significant digits), so positions agree to far better than this.
_VOXEL_TOLERANCE = 0.01
# An image's position is a DS value, which some series give to two decimals (0.005 mm either
# way), and a file's grid made from such positions (the first, and the mean step, as dcm2niix
# and ITK make it) is off by as much again: an image up to 0.02 mm from its voxel centre lies
# on it, where that is at most a quarter of a voxel (still far nearer one voxel than another).
_POSITION_TOLERANCE_MM = 0.02
_POSITION_TOLERANCE_MAX_VOXELS = 0.25
# RAS+ (NIfTI) to LPS+ (DICOM): x and y change sign.
_RAS_TO_LPS = np.diag([-1.0, -1.0, 1.0, 1.0])
_NIFTI_CONVENTION = ("its affine were in LPS+ (DICOM) rather than NIfTI's RAS+: the file was "
                     "written with the wrong convention; fix its affine")


def is_nifti_path(mask: object) -> bool:
    """Whether ``mask`` is the path of a NIfTI file (by its name)."""
    return isinstance(mask, (str, os.PathLike)) and str(mask).lower().endswith(_SUFFIXES)


def read_nifti(path: str | os.PathLike) -> tuple[da.Array | np.ndarray, np.ndarray]:
    """Return a NIfTI file's array and its affine in LPS+.

    The array of an uncompressed file is lazy (a Dask array of slabs read on the workers);
    a gzip stream cannot be read from the middle, so a ``.nii.gz`` is decompressed here, once.

    Raises
    ------
    MissingDependencyError
        If nibabel is not installed, naming the extra that installs it.
    SegmentationInputError
        If the file is missing or not NIfTI.
    """
    try:
        import nibabel
    except ImportError as error:
        raise MissingDependencyError(
            "Reading NIfTI masks needs nibabel: pip install 'daskseg[nifti]'."
        ) from error
    path = pathlib.Path(path)
    if not path.is_file():
        raise SegmentationInputError(f"The mask {path} does not exist.")
    try:
        image: Any = nibabel.load(path)  # a Nifti1Image or Nifti2Image
    except Exception as error:  # nibabel raises several types for a file it cannot read
        raise SegmentationInputError(f"Could not read the mask {path} as NIfTI: {error}") from error
    affine = image.affine
    if affine is None or not np.isfinite(affine).all():
        raise SegmentationInputError(f"The NIfTI mask {path} has no valid affine (sform or qform).")
    _check_forms_agree(image, path)
    proxy = image.dataobj
    if str(path).lower().endswith(".gz"):
        array = np.asanyarray(proxy)
    else:
        # Read on the workers, a file cut short would fail there with nibabel's "not enough
        # data in file"; its header says how long it is.
        expected = int(proxy.offset) + int(np.prod(proxy.shape)) * np.dtype(proxy.dtype).itemsize
        if path.stat().st_size < expected:
            raise SegmentationInputError(
                f"The NIfTI mask {path} is cut short: {path.stat().st_size} bytes, where its "
                f"header describes {expected} (its voxels from byte {int(proxy.offset)} on)."
            )
        # NIfTI data is Fortran-ordered: slabs of the last axis are contiguous in the file.
        # nibabel hands back values scaled by scl_slope/scl_inter, in the dtype that scaling
        # gives (float for an SPM-style probability map), not the file's: one voxel says which,
        # so that the mask is taken as the same values as from the .nii.gz.
        scaled = np.asanyarray(proxy[(slice(0, 1),) * len(proxy.shape)]).dtype
        array = da.from_array(proxy, chunks=(-1, -1, 1) + (-1,) * (len(proxy.shape) - 3))
        if array.dtype != scaled:  # the blocks come scaled already: no copy
            array = array.astype(scaled, copy=False)
    if array.ndim == 4 and array.shape[3] == 1:
        # (x, y, z, 1): a 3-D volume that its writer gave a 4th axis (time, or one component),
        # as ITK and so dcmqi read it; one plane of one segment is the same volume.
        array = array[..., 0]
    return array, _RAS_TO_LPS @ np.asarray(affine, dtype=float)


def nifti_voxel(path: str | os.PathLike, series: SourceSeries, frame: int, row: int,
                column: int) -> tuple[int, ...] | None:
    """The NIfTI file's voxel (i, j, k) that holds pixel (row, column) of source frame
    ``frame``, as :func:`match_to_series` placed it; None when the file cannot say (a message's
    words: the error path only, reading the header alone)."""
    try:
        import nibabel

        image: Any = nibabel.load(path)
        affine = _RAS_TO_LPS @ np.asarray(image.affine, dtype=np.float64)
        origins, down, right = _frame_voxels(series, affine)
        voxel = origins[frame] + row * down + column * right
    except Exception:  # noqa: BLE001 - only the wording of a message depends on it
        return None
    return tuple(int(v) for v in np.rint(voxel[:3]))


def _check_forms_agree(image: Any, path: pathlib.Path) -> None:
    """Refuse a file without an sform or qform, or whose sform and qform, both set, put its
    voxels in different places.

    nibabel (and so daskseg) follows the sform; ITK, and so dcmqi, may follow the qform: the same
    file would give SEGs with labels in different places. Measured at the corners of the volume,
    in voxels, with the tolerance of the match.
    """
    header = image.header
    if not hasattr(header, "get_sform"):
        return
    sform, sform_code = header.get_sform(coded=True)
    qform, qform_code = header.get_qform(coded=True)
    if not sform_code and not qform_code:
        # NIfTI-1's "method 1" (an ANALYZE-style header): nibabel makes up an affine centred
        # on the volume, ITK (so dcmqi) another; neither is where the voxels were.
        raise SegmentationInputError(
            f"The NIfTI mask {path} has no orientation: its sform_code and qform_code are both "
            "0, so where its voxels lie in the patient is not in the file. Save it with the "
            "series' affine (nibabel: Nifti1Image(array, affine), whose sform then says it)."
        )
    if not sform_code or not qform_code or sform is None or qform is None:
        return
    shape = np.asarray(image.shape[:3], dtype=float) - 1
    corners = np.array([[i, j, k, 1.0] for i in (0, shape[0]) for j in (0, shape[1])
                        for k in (0, shape[2])]).T
    try:
        apart = np.abs(np.linalg.inv(sform) @ (qform @ corners) - corners)[:3].max()
    except np.linalg.LinAlgError:
        return  # a singular sform: nibabel's affine is refused by the match anyway
    if apart > _VOXEL_TOLERANCE:
        millimetres = np.linalg.norm((sform @ corners - qform @ corners)[:3], axis=0).max()
        raise SegmentationInputError(
            f"The NIfTI mask {path} has an sform and a qform that disagree: they place its "
            f"voxels up to {millimetres:.3g} mm ({apart:.3g} voxels) apart. nibabel follows the "
            "sform, ITK-based tools (dcmqi) may follow the qform, so where its labels belong is "
            "not certain; rewrite the file with one affine (nibabel: img.set_qform(img.affine) "
            "or set one form's code to 0)."
        )


def _frame_voxels(series: SourceSeries, affine: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Voxel coordinates of each frame's first pixel, and voxel steps of one row and one column."""
    inverse = np.linalg.inv(affine)
    row_direction, column_direction = series.orientation[:3], series.orientation[3:]
    row_spacing, column_spacing = series.pixel_spacing
    # PS3.3 C.7.6.2.1.1: the column index runs along the row direction (first triplet).
    down = inverse[:3, :3] @ (column_direction * row_spacing)
    right = inverse[:3, :3] @ (row_direction * column_spacing)
    origins = (inverse @ np.c_[series.positions, np.ones(len(series.positions))].T)[:3].T
    return origins, down, right


def _axis(
    step: np.ndarray, steps: int, what: str, spacing: float, affine: np.ndarray, kind: str
) -> tuple[int, int]:
    """The file axis and direction (+1/-1) that one step of ``what`` moves along, or refuse.

    ``steps`` of them cross the image: a step's error adds up along them, so it is the last
    pixel's distance from its voxel centre that must be within the tolerance (a voxel 0.9%
    larger matches the first pixels of a 256-pixel row and misses the last by 2.3 voxels).
    """
    axis = int(np.argmax(np.abs(step)))
    sign = 1 if step[axis] > 0 else -1
    expected = np.zeros(3)
    expected[axis] = sign
    steps = max(steps, 1)
    if np.abs(step - expected).max() * steps > _VOXEL_TOLERANCE:
        voxel_sizes = np.linalg.norm(affine[:3, :3], axis=0)
        across = np.abs(step)
        across[axis] = 0.0
        if across.max() * steps > _VOXEL_TOLERANCE:
            problem = ("is not along one of the file's axes (the file is rotated against the "
                       "series; it would need resampling)")
        else:
            problem = (f"is {spacing:g} mm, but the file's voxels are "
                       f"{' x '.join(f'{v:g}' for v in voxel_sizes)} mm")
        raise SegmentationInputError(
            f"The {kind} mask does not match the source series: one step {what} {problem}."
        )
    return axis, sign


def match_to_series(
    array: da.Array | np.ndarray, affine: np.ndarray, series: SourceSeries, *,
    kind: str = "NIfTI", wrong_convention: str = _NIFTI_CONVENTION,
) -> da.Array | np.ndarray:
    """Reorder a mask with geometry into ``(frames, rows, columns[, ...])`` in the series' order.

    Parameters
    ----------
    array
        The file's array, indexed ``(i, j, k[, segments])``; numpy or Dask (transposed and
        flipped as views; slices out of order are taken with a copy).
    affine
        The file's voxel-to-LPS+ affine (4 x 4).
    series
        The source series; frame ``f`` of the result belongs to its frame ``f``.
    kind
        The file's format, named in the messages ("NIfTI", "NRRD").
    wrong_convention
        What to tell the user when the file would match with x and y negated (left and
        right, anterior and posterior swapped): how its convention was likely mistaken.

    Raises
    ------
    SegmentationInputError
        If a source pixel is not a voxel of the file, or a slice of the file belongs to no
        source frame; the message says which way they differ.
    """
    if array.ndim not in (3, 4):
        raise SegmentationInputError(
            f"The {kind} mask has {array.ndim} dimensions {tuple(array.shape)}; expected a label "
            "volume (i, j, k) or one volume per segment (i, j, k, segments)."
        )
    try:
        return _match(array, affine, series, kind)
    except SegmentationInputError as error:
        # The commonest mistake: coordinates of one convention (LPS+, RAS+) written as the other.
        try:
            _match(array, _RAS_TO_LPS @ affine, series, kind)
        except SegmentationInputError:
            raise error from None
        raise SegmentationInputError(f"{error} It would match if {wrong_convention}.") from None


def _match(
    array: da.Array | np.ndarray, affine: np.ndarray, series: SourceSeries, kind: str
) -> da.Array | np.ndarray:
    origins, down, right = _frame_voxels(series, affine)
    row_axis, row_sign = _axis(
        down, series.rows - 1, "down a column of the series", series.pixel_spacing[0], affine,
        kind,
    )
    column_axis, column_sign = _axis(
        right, series.columns - 1, "along a row of the series", series.pixel_spacing[1], affine,
        kind,
    )
    if row_axis == column_axis:
        raise SegmentationInputError(
            f"The {kind} mask does not match the source series: the series' rows and columns run "
            "along the same axis of the file."
        )
    slice_axis = 3 - row_axis - column_axis
    rounded = np.round(origins)
    off = np.abs(origins - rounded).max(axis=1)
    off_mm = np.linalg.norm((origins - rounded) @ affine[:3, :3].T, axis=1)
    between = (off > _VOXEL_TOLERANCE) & (
        (off_mm > _POSITION_TOLERANCE_MM) | (off > _POSITION_TOLERANCE_MAX_VOXELS))
    if between.any():
        frame = int(np.argmax(np.where(between, off, -1.0)))
        millimetres = (affine[:3, :3] @ (origins[frame] - rounded[frame]))
        raise SegmentationInputError(
            f"The {kind} mask does not match the source series: image {frame + 1} "
            f"({series.sop_instance_uids[frame]}) lies between the file's voxels, "
            f"{np.linalg.norm(millimetres):.3g} mm from the nearest voxel centre (at voxel "
            f"{np.round(origins[frame], 2).tolist()}); the file would need resampling."
        )
    rounded = rounded.astype(int)
    order = (slice_axis, row_axis, column_axis) + tuple(range(3, array.ndim))
    volume = array.transpose(order)
    if row_sign < 0:
        volume = volume[:, ::-1]
    if column_sign < 0:
        volume = volume[:, :, ::-1]
    extent = volume.shape[:3]
    # Where each image's first pixel is in the volume (slice, row, column): a file cropped to
    # its labels (3D Slicer saves segmentations so) or larger than the series is placed on the
    # series' grid, voxel for voxel, never resampled.
    slices = rounded[:, slice_axis]
    tops = rounded[:, row_axis] if row_sign > 0 else extent[1] - 1 - rounded[:, row_axis]
    lefts = rounded[:, column_axis] if column_sign > 0 else extent[2] - 1 - rounded[:, column_axis]
    if (tops != tops[0]).any() or (lefts != lefts[0]).any():
        frame = int(np.argmax((tops != tops[0]) | (lefts != lefts[0])))
        raise SegmentationInputError(
            f"The {kind} mask does not match the source series: image {frame + 1} is shifted "
            f"by ({int(tops[frame] - tops[0])}, {int(lefts[frame] - lefts[0])}) voxels within "
            "its slice against the first image; the file would need resampling."
        )
    if len(set(slices.tolist())) != len(slices):
        raise SegmentationInputError(
            f"The {kind} mask does not match the source series: several images lie at one of "
            f"its slices (at {sorted(slices.tolist())} along its axis {slice_axis}); its slices "
            "are spaced differently."
        )
    top, left = int(tops[0]), int(lefts[0])
    rows, columns = series.rows, series.columns
    if (top, left) == (0, 0) and extent[1:] == (rows, columns) and len(slices) == extent[0]:
        if (slices == np.arange(extent[0])).all():
            return volume
        if (slices == np.arange(extent[0])[::-1]).all():
            return volume[::-1]
        if sorted(slices.tolist()) == list(range(extent[0])):
            return volume[slices]
    return _placed(volume, slices, top, left, rows, columns, kind)


def _placed(volume: Any, slices: np.ndarray, top: int, left: int, rows: int, columns: int,
            kind: str) -> Any:
    """Frame f: the volume's slice ``slices[f]`` from row ``top`` and column ``left``, zeros
    where the volume does not reach; refused when the volume has labels the series does not
    (voxels in no image)."""
    extent = volume.shape[:3]
    row_span = (max(0, top), min(extent[1], top + rows))
    column_span = (max(0, left), min(extent[2], left + columns))
    used = [int(s) for s in slices if 0 <= s < extent[0]]
    if not used or row_span[1] <= row_span[0] or column_span[1] <= column_span[0]:
        raise SegmentationInputError(
            f"The {kind} mask does not match the source series: on the series' grid it lies "
            f"outside every image (shifted by {-top} rows and {-left} columns, the images at "
            f"its slices {int(slices.min())} to {int(slices.max())} of 0 to {extent[0] - 1}): "
            "is it of another series?"
        )
    # The volume's voxels outside every image must be empty: whole slices, then margins.
    imageless = sorted(set(range(extent[0])) - set(used))
    labelled = [s for s in imageless if bool(np.asarray(volume[s].any()))]
    if labelled:  # ``used`` is not empty: refused above
        # Slices between the images' own (or beyond them) that no image lies at.
        listed = ", ".join(map(str, labelled[:8])) + (", ..." if len(labelled) > 8 else "")
        raise SegmentationInputError(
            f"The {kind} mask does not match the source series: its slices {listed} (of 0 to "
            f"{extent[0] - 1}) hold labels, but no image of the series lies at them; the "
            f"images lie at its slices {', '.join(map(str, sorted(used)[:8]))}"
            f"{', ...' if len(used) > 8 else ''}. Is an image missing from the series (a file "
            "lost from its folder), or is the mask of another series?"
        )
    outside = []
    for s0, s1, axis in ((0, row_span[0], 1), (row_span[1], extent[1], 1),
                         (0, column_span[0], 2), (column_span[1], extent[2], 2)):
        if s1 > s0:
            index: list[Any] = [slice(None)] * volume.ndim
            index[0] = used
            index[axis] = slice(s0, s1)
            outside.append(volume[tuple(index)])
    if any(bool(np.asarray(part.any())) for part in outside if part.size):
        raise SegmentationInputError(
            f"The {kind} mask does not match the source series: it holds labels outside the "
            f"series' images. Placed voxel for voxel, it is shifted by {-top} rows and {-left} "
            f"columns against the images, and they lie at its slices {int(slices.min())} to "
            f"{int(slices.max())} of 0 to {extent[0] - 1}: is it of another series?"
        )
    rest = volume.shape[3:]
    pad = ((max(0, -top), rows - max(0, -top) - (row_span[1] - row_span[0])),
           (max(0, -left), columns - max(0, -left) - (column_span[1] - column_span[0])))
    if isinstance(volume, np.ndarray):
        out = np.zeros((len(slices), rows, columns, *rest), dtype=volume.dtype)
        for frame, s in enumerate(slices):
            if 0 <= s < extent[0]:
                out[frame, pad[0][0] : rows - pad[0][1], pad[1][0] : columns - pad[1][1]] = \
                    volume[s, row_span[0] : row_span[1], column_span[0] : column_span[1]]
        return out
    frames = []
    for s in slices:
        if 0 <= s < extent[0]:
            part = volume[int(s), row_span[0] : row_span[1], column_span[0] : column_span[1]]
            frames.append(da.pad(part, (*pad, *((0, 0),) * len(rest))))
        else:
            frames.append(da.zeros((rows, columns, *rest), dtype=volume.dtype))
    return da.stack(frames)


def _slice_spacing(steps: np.ndarray, measures: Dataset, of_series: bool = False) -> float:
    """The distance between the NIfTI's slices, from the planes' ``steps`` (absolute, in mm).

    ``of_series``: the steps are between the series' own images, all of them; the smallest is
    the spacing. Otherwise SpacingBetweenSlices when the SEG gives it (PS3.3 C.7.6.16.2.1),
    even for one plane, when the steps are whole numbers of it. Otherwise SliceThickness when
    every step is a whole number of it: planes whose empty neighbours were left out are then as
    far apart as the slices of their series, as dcmqi's segimage2itkimage reads them.
    Otherwise the smallest step; 1 mm for a lone plane.
    """
    def positive(keyword: str) -> float | None:
        try:
            value = abs(float(measures.get(keyword)))
        except (TypeError, ValueError):
            return None
        return value if value > 0 else None

    if len(steps) and steps.min() < 1e-6:
        raise SegmentationInputError(
            "Two of the SEG's planes lie at the same position along the slice normal (images "
            "of several phases or series?), so they cannot be one NIfTI volume."
        )
    if of_series and len(steps):
        return float(steps.min())
    given = positive("SpacingBetweenSlices")
    if given is not None:
        multiples = steps / given
        # Far from whole numbers of it (a tenth): highdicom copies it from the source images,
        # whatever their positions say. Planes a hair off its grid are refused below, as such.
        if len(steps) and not (np.allclose(multiples, np.rint(multiples), atol=0.1)
                               and (np.rint(multiples) >= 1).all()):
            raise SegmentationInputError(
                f"The SEG's SpacingBetweenSlices, {given:g} mm, disagrees with the steps "
                f"between its planes ({', '.join(f'{v:g}' for v in sorted(set(np.round(steps, 4))))} "
                "mm): its header is inconsistent. Give the series (--source), whose images' "
                "positions make the slices."
            )
        return given
    thickness = positive("SliceThickness")
    if thickness is not None:
        multiples = steps / thickness
        if np.allclose(multiples, np.rint(multiples), atol=1e-3) and (multiples >= 0.5).all():
            return thickness
    return float(steps.min()) if len(steps) else 1.0


def _check_on_series_grid(reader: Any, series: Any, orientation: list[float],
                          pixel_spacing: list[float]) -> None:
    """Refuse a SEG whose frames are not on the pixel grid of the series' images.

    Such frames (dcmqi writes them in the orientation of the NIfTI it is given: one turned to
    RAS flips rows and columns) put at the series' slice positions would misplace every label.
    """
    header = reader.header
    size = (int(header.Rows), int(header.Columns))
    problems = []
    if not np.allclose(orientation, series.orientation, rtol=0, atol=1e-4):
        problems.append(f"its frames are oriented {_listed(orientation)}, the series' images "
                        f"{_listed(series.orientation)}")
    if size != (series.rows, series.columns):
        problems.append(f"its frames are {size[0]} x {size[1]} pixels, the images "
                        f"{series.rows} x {series.columns}")
    if not np.allclose(pixel_spacing, series.pixel_spacing, rtol=1e-4, atol=0):
        problems.append(f"its PixelSpacing is {_listed(pixel_spacing)}, the images' "
                        f"{_listed(series.pixel_spacing)}")
    if problems:
        raise SegmentationInputError(
            f"The SEG's frames are not on the pixel grid of the series' images ({'; '.join(problems)}): "
            "leave out the series (--source), and the NIfTI takes the SEG's own geometry."
        )


def _listed(values: Any) -> str:
    return "[" + ", ".join(f"{float(v):g}" for v in values) + "]"


def _slices_of_planes(reader: Any, uids: list[str], positions: np.ndarray,
                      pixel_spacing: float) -> np.ndarray | None:
    """The series slice (index into ``uids``) of each of the SEG's planes in its default order,
    by the plane's source image, or by its position for a plane whose frames reference none;
    None when some plane has no position (then planes are read by the images' UIDs).

    A plane that lies elsewhere than its source image, or at no image, is refused.
    """
    planes = reader.plane_positions()
    if np.isnan(planes).any():
        return None
    tolerance = 1e-2 * pixel_spacing  # well below a pixel; above rounding of DS values
    slice_of_uid = {uid: k for k, uid in enumerate(uids)}
    slices = np.empty(len(planes), dtype=np.int64)
    for plane, (uid, position) in enumerate(zip(reader.source_sop_instance_uids, planes)):
        distances = np.abs(positions - position).max(axis=1)
        if uid:
            k = slice_of_uid[uid]
            if distances[k] > tolerance:
                raise SegmentationInputError(
                    f"The SEG's plane of image {uid} lies at {_listed(position)}, the image at "
                    f"{_listed(positions[k])}: the SEG is not on the series' grid; leave out "
                    "the series (--source), and the NIfTI takes the SEG's own geometry."
                )
        else:
            k = int(np.argmin(distances)) if len(distances) else -1
            if k < 0 or distances[k] > tolerance:
                raise SegmentationInputError(
                    f"The SEG's plane at {_listed(position)} (frames that reference no source "
                    "image) lies at no image of the series: leave out the series (--source), "
                    "and the NIfTI takes the SEG's own geometry."
                )
        slices[plane] = k
    if len(set(slices.tolist())) < len(slices):
        raise SegmentationInputError(
            "Two of the SEG's planes lie at one image of the series: the SEG is damaged, or "
            "not of this series."
        )
    return slices


def _check_fits_in_memory(reader: Any, n_slices: int, combine_segments: bool) -> None:
    """Refuse a NIfTI volume larger than the memory available: it is made whole in memory (a
    BINARY SEG of 117 segments on a fourth axis is 117 times its label volume)."""
    import psutil  # type: ignore[import-untyped]  # distributed needs it

    rows, columns = reader.frame_size
    segments = 1 if combine_segments else len(reader.segment_numbers)
    # At least: fractions as float32, labels above 255 as uint16, else a byte a voxel.
    itemsize = (4 if reader.segmentation_type == "FRACTIONAL"
                else 2 if max(reader.segment_numbers, default=0) > 255 else 1)
    needed = n_slices * rows * columns * segments * itemsize
    available = psutil.virtual_memory().available
    if needed > available:
        raise SegmentationInputError(
            f"The NIfTI volume would be {needed / 2**30:.1f} GiB ({n_slices} slices of "
            f"{rows} x {columns}" + ("" if combine_segments else f", {segments} segments") +
            f"), more than the {available / 2**30:.1f} GiB of memory available, where it is "
            "made whole before it is written. "
            + ("Combine the segments into labels (combine_segments=True, or leave out "
               "--segment-axis), or write" if not combine_segments else "Write")
            + " its planes to Zarr instead, block by block (to_zarr; daskseg decode -o "
            "labels.zarr), their positions from plane_positions()."
        )


def volume_to_nifti(reader: Any, path: str | os.PathLike, client: Any = None,
                    source_images: Any = None,
                    combine_segments: bool | None = None) -> pathlib.Path:
    """Write a volume SEG's planes as a NIfTI file in the series' geometry (RAS+ affine).

    The inverse of :func:`match_to_series`: the file's axes are (column, row, slice), its
    affine from the planes' positions, the shared orientation and pixel spacing. Labels
    (segments combined) for BINARY and LABELMAP, fractions of each segment on a fourth axis
    for FRACTIONAL; ``combine_segments=False`` puts each segment on the fourth axis for the
    others too (BINARY segments that overlap cannot be labels). The slices run from the first
    to the last plane with frames; planes without frames in between (omitted empty frames)
    are zeros. With ``source_images`` (the series, as :func:`daskseg.write_segmentation`
    takes it), one slice for each of its images, those without frames zeros: the geometry of
    the series itself, which the SEG alone does not give when its first or last slices were
    left out as empty.

    Raises
    ------
    MissingDependencyError
        If nibabel is not installed.
    SegmentationInputError
        If the planes are not a regular grid (different steps, a missing orientation).
    """
    try:
        import highdicom as hd
        import nibabel
    except ImportError as error:
        raise MissingDependencyError(
            "Writing NIfTI needs nibabel: pip install 'daskseg[nifti]'."
        ) from error
    from daskseg._inputs import check_destination

    if not str(path).lower().endswith(_SUFFIXES):
        # nibabel writes NIfTI whatever the name: labels.nrrd held NIfTI.
        raise SegmentationInputError(f"{path}: a NIfTI file is named .nii or .nii.gz.")
    check_destination(path, overwrite=True)  # its folder exists (the file is replaced)
    header = reader.header
    shared = header.SharedFunctionalGroupsSequence[0]
    try:
        # Shared, or each frame's own when all agree (as the reader sorts the planes).
        if reader.plane_orientation is None:
            raise AttributeError("no one plane orientation")
        orientation = list(reader.plane_orientation)
        measures = shared.PixelMeasuresSequence[0]
        pixel_spacing = [float(v) for v in measures.PixelSpacing]
    except (AttributeError, IndexError) as error:
        raise SegmentationInputError(
            "The SEG has no one plane orientation and no shared pixel spacing, so its voxels "
            "have no one geometry for NIfTI."
        ) from error
    except (TypeError, ValueError) as error:
        raise SegmentationFileError(
            f"{reader.path}: its shared plane orientation or pixel spacing is not numbers "
            f"({error}): the header is damaged."
        ) from error
    if (len(orientation) != 6 or len(pixel_spacing) != 2
            or not all(np.isfinite(v) and v > 0 for v in pixel_spacing)):
        raise SegmentationFileError(
            f"{reader.path}: its shared ImageOrientationPatient {orientation} and PixelSpacing "
            f"{pixel_spacing} are not 6 direction cosines and 2 positive distances (PS3.3 "
            "C.7.6.2.1.1, C.7.6.16.2.1): no NIfTI affine can be made of them."
        )
    cosines = np.array(orientation).reshape(2, 3)
    norms = np.linalg.norm(cosines, axis=1)
    # Right angles as highdicom's volumes check their affine (1e-4 between the unit
    # directions); unit length within what 4 decimals of DS leave (highdicom reads
    # [0.8198, -0.5036, 0.2728, ...], 1.05e-4 off). Skewed or stretched axes would put a
    # NIfTI's voxels elsewhere than the SEG's frames are.
    if not (np.isfinite(norms).all() and norms.all()
            and np.allclose(norms**2, 1.0, atol=1e-3, rtol=0)
            and abs(float(cosines[0] @ cosines[1]) / float(norms[0] * norms[1])) <= 1e-4):
        raise SegmentationFileError(
            f"{reader.path}: its ImageOrientationPatient {orientation} is not two unit "
            "vectors at right angles (the direction cosines of the rows and columns, PS3.3 "
            "C.7.6.2.1.1): no NIfTI affine places its frames; read the frames as an array "
            "(read_segmentation) instead."
        )
    if source_images is not None:
        # The SEG must be of this series: its images are the planes, read by their UIDs.
        try:
            series = load_source_series(source_images)
        except SegmentationInputError as error:
            raise SegmentationInputError(
                f"source_images must be the series the SEG is of, as single-frame images: {error}"
            ) from None
        if series.multiframe:
            raise SegmentationInputError(
                "source_images for NIfTI output must be a series of single-frame images, not "
                "one multi-frame image; leave it out (the SEG's planes make the volume)."
            )
        order = series.sort_index()
        uids = [series.sop_instance_uids[k] for k in order]
        referenced = [uid for uid in reader.source_sop_instance_uids if uid]
        # Frames that reference no image (dcmqi leaves the references out where its geometry
        # check failed) are placed by position: the series is then the one the header lists,
        # or, listing none, one of the SEG's frame of reference.
        listed = referenced or sorted(referenced_instances(reader.header))
        if listed and not set(uids) & set(listed):
            raise SegmentationInputError(
                "source_images holds none of the images that the SEG's frames are of: it is "
                "another series."
            )
        frame_of_reference = str(reader.header.get("FrameOfReferenceUID", ""))
        if not listed and frame_of_reference != series.frame_of_reference_uid:
            raise SegmentationInputError(
                f"The SEG references no source image and its frame of reference "
                f"({frame_of_reference or 'none'}) is not the series' "
                f"({series.frame_of_reference_uid}): source_images is another series."
            )
        given = set(uids)
        missing = [uid for uid in referenced if uid not in given]
        if missing:
            # Their frames would have no slice: the labels of those planes would be lost.
            raise SegmentationInputError(
                f"source_images lacks {len(missing)} of the images that the SEG's frames are "
                f"of ({', '.join(missing[:3])}{', ...' if len(missing) > 3 else ''}): give the "
                "whole series, or leave it out (the SEG's own planes make the volume)."
            )
        positions = series.positions[order]
        _check_on_series_grid(reader, series, orientation, pixel_spacing)
        slice_of_plane = _slices_of_planes(reader, uids, positions, min(pixel_spacing))
    else:
        slice_of_plane = None
        uids = None
        positions = reader.plane_positions()
    # highdicom's volumes: slice, row and column indices are right-handed, so slices run along
    # column direction x row direction.
    normal = np.cross(orientation[3:], orientation[:3])
    distances = positions @ normal
    steps = np.diff(distances)
    spacing = _slice_spacing(np.abs(steps), measures, of_series=source_images is not None)
    if len(steps) and steps.sum() < 0:  # planes sorted against the normal
        spacing = -spacing
    index = np.rint((distances - distances[0]) / spacing)
    expected = positions[0] + np.outer(index, normal * spacing)
    # rtol=0: a millionth of the distance from the origin would add microns far from it.
    if len(steps) and (not np.allclose(positions, expected, rtol=0, atol=1e-3 * abs(spacing))
                       or (index < 0).any()):
        raise SegmentationInputError(
            "The SEG's planes are not a regular grid of slices (other steps, or off the slice "
            "normal), so they cannot be one NIfTI volume."
        )
    if combine_segments is None:
        combine_segments = reader.segmentation_type != "FRACTIONAL"
    n_slices = int(index.max()) + 1 if len(index) else 0
    _check_fits_in_memory(reader, n_slices, combine_segments)
    if slice_of_plane is not None:
        # The SEG's planes in its own order, each put at the series' slice it lies at.
        planes = reader.to_numpy(combine_segments=combine_segments, client=client)
        slices = index.astype(int)[slice_of_plane]
    else:
        planes = reader.to_numpy(combine_segments=combine_segments, client=client,
                                 source_sop_instance_uids=uids)
        slices = index.astype(int)
    if n_slices == len(planes) and np.array_equal(slices, np.arange(n_slices)):
        volume = planes  # every slice has a plane, in order: no second copy of the labels
    else:
        volume = np.zeros((n_slices, *planes.shape[1:]), dtype=planes.dtype)
        volume[slices] = planes
        del planes
    geometry = hd.VolumeGeometry.from_attributes(
        image_position=positions[0].tolist(), image_orientation=orientation,
        rows=volume.shape[1], columns=volume.shape[2], pixel_spacing=pixel_spacing,
        spacing_between_slices=spacing,
        number_of_frames=volume.shape[0], coordinate_system="PATIENT",
    )
    if volume.ndim == 4:
        # highdicom converts 3D volumes only: its affine, and one segment per 4th-axis index.
        spatial = geometry.with_array(np.zeros(volume.shape[:3], np.uint8))
        affine = spatial.permute_spatial_axes([2, 1, 0]).to_nibabel().affine
        image = nibabel.Nifti1Image(volume.transpose(2, 1, 0, 3), affine)
    else:
        image = geometry.with_array(volume).permute_spatial_axes([2, 1, 0]).to_nibabel()
    path = pathlib.Path(path)
    # Written beside the destination and renamed: a failure leaves no half-written file.
    suffix = ".nii.gz" if path.name.lower().endswith(".gz") else ".nii"
    with naming_a_full_disk(path, "the NIfTI file", spooled=False), \
            file_beside(path, suffix) as temporary:
        try:
            image.to_filename(temporary)
        except BaseException as error:
            # nibabel's frames in the traceback hold its file open: removed, it kept its room
            # on a full disk for as long as the exception lived (a notebook keeps the last).
            traceback.clear_frames(error.__traceback__)
            raise
    return path
