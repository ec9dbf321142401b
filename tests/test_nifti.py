"""Volume masks: frame k for source frame k, and NIfTI files matched to the series by geometry."""

from __future__ import annotations

import random

import dask.array as da
import highdicom as hd
import numpy as np
import pytest

from daskseg import SegmentationInputError, SegmentationTypeError
from daskseg._series import load_source_series
from daskseg._volume import volume_mask

nibabel = pytest.importorskip("nibabel")

from daskseg.synthetic import make_ct_series  # noqa: E402

OBLIQUE = (0.8660254037844387, 0.5, 0.0, -0.5, 0.8660254037844387, 0.0)
LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0, 1.0])


def _shuffled_series(orientation=OBLIQUE, slices=6, rows=10, columns=7):
    datasets = make_ct_series(slices, rows, columns, orientation=orientation)
    random.Random(5).shuffle(datasets)
    return load_source_series(datasets)


def _sorted_geometry(series):
    """highdicom's geometry of the series' volume: (slice, row, column) indices -> LPS+ mm."""
    order = series.sort_index()
    spacing = float(np.linalg.norm(series.positions[order[1]] - series.positions[order[0]]))
    return hd.VolumeGeometry.from_attributes(
        image_position=series.positions[order[0]],
        image_orientation=series.orientation,
        rows=series.rows,
        columns=series.columns,
        pixel_spacing=series.pixel_spacing,
        spacing_between_slices=spacing,
        number_of_frames=series.number_of_frames,
        coordinate_system="PATIENT",
    )


def _labels(shape, seed=0):
    return np.random.default_rng(seed).integers(0, 4, size=shape, dtype=np.uint8)


def _permute(array, affine, axes):
    return array.transpose(axes + tuple(range(3, array.ndim))), affine[:, [*axes, 3]]


def _flip(array, affine, axis):
    affine = affine.copy()
    affine[:3, 3] += affine[:3, axis] * (array.shape[axis] - 1)
    affine[:3, axis] *= -1
    return np.flip(array, axis), affine


def _save(tmp_path, array, affine_lps, name="mask.nii.gz", ras=True):
    path = tmp_path / name
    affine = LPS_TO_RAS @ affine_lps if ras else affine_lps
    nibabel.Nifti1Image(np.ascontiguousarray(array), affine).to_filename(path)
    return path


def _in_given_order(series, volume):
    """A volume in highdicom's sorted order, reordered to the series' given order."""
    given = np.empty_like(volume)
    given[series.sort_index()] = volume
    return given


@pytest.mark.parametrize(
    ("axes", "flips", "name"),
    [
        ((0, 1, 2), (), "mask.nii.gz"),
        ((2, 1, 0), (), "mask.nii"),  # (column, row, slice), as dcm2niix writes axial CT
        ((2, 1, 0), (1,), "mask.nii.gz"),
        ((1, 2, 0), (0, 2), "mask.nii"),
        ((0, 2, 1), (0, 1, 2), "mask.nii.gz"),
    ],
)
def test_nifti_in_any_axis_order_is_matched_to_the_series(tmp_path, axes, flips, name):
    series = _shuffled_series()
    geometry = _sorted_geometry(series)
    volume = _labels(geometry.spatial_shape)
    array, affine = _permute(volume, geometry.affine, axes)
    for axis in flips:
        array, affine = _flip(array, affine, axis)
    path = _save(tmp_path, array, affine, name)

    mask, stacked = volume_mask(path, series, 3)
    assert not stacked and mask.shape == (6, 10, 7)
    np.testing.assert_array_equal(np.asarray(mask), _in_given_order(series, volume))
    # highdicom's own matching of the file to the series' geometry agrees.
    matched = hd.Volume.from_nibabel(nibabel.load(path)).match_geometry(geometry)
    np.testing.assert_array_equal(matched.array, volume)


def test_nifti_with_one_volume_per_segment(tmp_path):
    series = _shuffled_series(orientation=(1, 0, 0, 0, 1, 0))
    geometry = _sorted_geometry(series)
    planes = _labels((*geometry.spatial_shape, 3), seed=2) > 1
    array, affine = _permute(planes, geometry.affine, (2, 1, 0))
    path = _save(tmp_path, array.astype(np.uint8), affine)
    mask, stacked = volume_mask(path, series, 3)
    assert stacked
    np.testing.assert_array_equal(np.asarray(mask), _in_given_order(series, planes.astype(np.uint8)))


def _refusal(tmp_path, series, array, affine, **kwargs):
    path = _save(tmp_path, array, affine, **kwargs)
    with pytest.raises(SegmentationInputError) as info:
        volume_mask(path, series, 3)
    return str(info.value)


def test_nifti_that_does_not_match_is_refused_saying_how(tmp_path):
    series = _shuffled_series()
    geometry = _sorted_geometry(series)
    volume = _labels(geometry.spatial_shape)
    affine = geometry.affine

    shifted = affine.copy()
    shifted[:3, 3] += affine[:3, 1]  # one row down
    assert "shifted by" in _refusal(tmp_path, series, volume, shifted)

    between = affine.copy()
    between[:3, 3] += 0.5 * affine[:3, 0]  # half a slice
    assert "lies between the file's voxels" in _refusal(tmp_path, series, volume, between)

    coarse = affine.copy()
    coarse[:3, 2] *= 2  # columns twice as wide
    message = _refusal(tmp_path, series, volume, coarse)
    assert "along a row of the series is 0.7 mm" in message

    rotation = np.eye(4)
    rotation[:2, :2] = [[np.cos(0.3), -np.sin(0.3)], [np.sin(0.3), np.cos(0.3)]]
    assert "rotated against the series" in _refusal(tmp_path, series, volume, rotation @ affine)

    assert "LPS+ (DICOM) rather than NIfTI's RAS+" in _refusal(
        tmp_path, series, volume, affine, ras=False
    )
    assert "has 5 slices, but the source series has 6" in _refusal(
        tmp_path, series, volume[:5], affine
    )


def test_arrays_follow_the_given_order_and_wrong_shapes_are_refused():
    series = _shuffled_series(slices=4, rows=5, columns=6)
    labels = _labels((4, 5, 6))
    mask, stacked = volume_mask(da.from_array(labels, chunks=2), series, 3)
    assert not stacked
    np.testing.assert_array_equal(np.asarray(mask), labels)
    with pytest.raises(SegmentationInputError, match=r"expected labels \(4, 5, 6\)"):
        volume_mask(labels[:3], series, 3)
    with pytest.raises(SegmentationInputError, match="stacks 2 segment planes"):
        volume_mask(np.zeros((4, 5, 6, 2), bool), series, 3)
    with pytest.raises(SegmentationTypeError, match="must hold integers"):
        volume_mask(labels.astype(float), series, 3)
    one = load_source_series(make_ct_series(1, 5, 6))
    mask, stacked = volume_mask(np.ones((5, 6, 3), bool), one, 3)
    assert stacked and mask.shape == (1, 5, 6, 3)
