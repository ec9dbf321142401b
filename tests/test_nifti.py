"""Volume masks: frame k for source frame k, and NIfTI files matched to the series by geometry."""

from __future__ import annotations

import copy
import sys

import dask.array as da
import highdicom as hd
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from daskseg import MissingDependencyError, SegmentationInputError, SegmentationTypeError
from daskseg._series import load_source_series
from daskseg._volume import volume_mask
from daskseg.synthetic import make_ct_series

from _geometry import (
    LPS_TO_RAS,
    OBLIQUE,
    cropped,
    file_labels,
    flip,
    in_given_order,
    permute,
    placement_cases,
    placement_of,
    random_labels,
    shuffled_series,
    sorted_geometry,
)

nibabel = pytest.importorskip("nibabel")


def _save(tmp_path, array, affine_lps, name="mask.nii.gz", ras=True):
    path = tmp_path / name
    affine = LPS_TO_RAS @ affine_lps if ras else affine_lps
    nibabel.Nifti1Image(np.ascontiguousarray(array), affine).to_filename(path)
    return path


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
    series = shuffled_series()
    volume, array, affine = file_labels(series, axes, flips)
    path = _save(tmp_path, array, affine, name)

    mask, stacked = volume_mask(path, series, 3)
    assert not stacked and mask.shape == (6, 10, 7)
    np.testing.assert_array_equal(np.asarray(mask), in_given_order(series, volume))
    # highdicom's own matching of the file to the series' geometry agrees.
    matched = hd.Volume.from_nibabel(nibabel.load(path)).match_geometry(sorted_geometry(series))
    np.testing.assert_array_equal(matched.array, volume)


@pytest.mark.parametrize(("axes", "flips"), [((0, 1, 2), ()), ((2, 1, 0), (1,)),
                                             ((1, 2, 0), (0, 2))])
def test_a_bad_value_is_named_by_its_voxel_in_the_file(tmp_path, thread_client, axes, flips):
    # It was named by its mask frame in the series' order, which the file's user cannot find.
    from daskseg import write_segmentation
    from daskseg.synthetic import make_segment_descriptions

    series = shuffled_series()
    _, array, affine = file_labels(series, axes, flips)
    voxel = tuple(int(v) for v in np.random.default_rng(len(flips)).integers(0, array.shape))
    array[voxel] = 9  # 3 segments are described
    path = _save(tmp_path, array, affine)
    with pytest.raises(SegmentationInputError, match=rf"label 9 at the file's voxel "
                       rf"\(i, j, k\) \({voxel[0]}, {voxel[1]}, {voxel[2]}\) \(source image"):
        write_segmentation(path, list(series.datasets), make_segment_descriptions(3),
                           tmp_path / "seg.dcm", client=thread_client)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["mask.nii.gz"]


@pytest.mark.parametrize("name", ["mask.nii", "mask.nii.gz"])
def test_scaled_nifti_is_taken_as_nibabel_scales_it(tmp_path, name):
    """scl_slope / scl_inter (an SPM-style uint8 probability map): the mask is the values
    nibabel returns, floats, from a lazily read .nii as from a .nii.gz."""
    series = shuffled_series()
    volume, array, affine = file_labels(series, (2, 1, 0), ())
    image = nibabel.Nifti1Image(np.ascontiguousarray(array).astype(np.uint8),
                                LPS_TO_RAS @ affine)
    image.header.set_slope_inter(0.25, 0.0)
    image.to_filename(tmp_path / name)
    expected = np.asanyarray(nibabel.load(tmp_path / name).dataobj)
    assert expected.dtype.kind == "f"
    mask, stacked = volume_mask(tmp_path / name, series, 1)
    assert stacked and mask.dtype.kind == "f"
    np.testing.assert_array_equal(np.asarray(mask)[..., 0],
                                  in_given_order(series, volume * 0.25))
    # Several segments: the values are taken as labels, and 0.25 is none.
    with pytest.raises(SegmentationInputError, match=r"one is 0\.\d+, not a whole number"):
        mask, _ = volume_mask(tmp_path / name, series, 3)
        np.asarray(mask)  # a .nii is read lazily: its values are checked as they are read


@pytest.mark.parametrize("name", ["labels.nii", "labels.nii.gz"])
def test_labels_stored_as_floating_point_are_labels(tmp_path, name):
    """MONAI saves segmentations as float32 by default; dcmqi (ITK) reads such a file's whole
    numbers as labels, and so does daskseg when several segments are described."""
    series = shuffled_series()
    volume, array, affine = file_labels(series, (2, 1, 0), ())
    image = nibabel.Nifti1Image(np.ascontiguousarray(array).astype(np.float32),
                                LPS_TO_RAS @ affine)
    image.to_filename(tmp_path / name)
    mask, stacked = volume_mask(tmp_path / name, series, 3)
    assert not stacked and np.asarray(mask).dtype.kind == "u"
    np.testing.assert_array_equal(np.asarray(mask), in_given_order(series, volume))


def test_nifti_with_one_volume_per_segment(tmp_path):
    series = shuffled_series(orientation=(1, 0, 0, 0, 1, 0))
    geometry = sorted_geometry(series)
    planes = random_labels((*geometry.spatial_shape, 3), seed=2) > 1
    array, affine = permute(planes, geometry.affine, (2, 1, 0))
    path = _save(tmp_path, array.astype(np.uint8), affine)
    mask, stacked = volume_mask(path, series, 3)
    assert stacked
    np.testing.assert_array_equal(np.asarray(mask), in_given_order(series, planes.astype(np.uint8)))


@pytest.mark.parametrize("name", ["labels.nii.gz", "labels.nii"])
def test_a_label_volume_with_a_4th_axis_of_one_is_labels(tmp_path, name):
    """(x, y, z, 1), as some writers save a 3-D label volume: labels, as dcmqi (ITK) reads it,
    not one plane of a single segment."""
    series = shuffled_series()
    volume, array, affine = file_labels(series, (2, 1, 0), ())
    path = _save(tmp_path, np.asarray(array)[..., None], affine, name=name)
    mask, stacked = volume_mask(path, series, 3)
    assert not stacked
    np.testing.assert_array_equal(np.asarray(mask), in_given_order(series, volume))


def _refusal(tmp_path, series, array, affine, **kwargs):
    path = _save(tmp_path, array, affine, **kwargs)
    with pytest.raises(SegmentationInputError) as info:
        volume_mask(path, series, 3)
    return str(info.value)


def test_nifti_that_does_not_match_is_refused_saying_how(tmp_path):
    series = shuffled_series()
    geometry = sorted_geometry(series)
    volume = random_labels(geometry.spatial_shape)
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
    # Larger than the series by a slice, with labels there: of another series, or shifted.
    assert "its slices 6 (of 0 to 6) hold labels, but no image of the series lies at them" in (
        _refusal(tmp_path, series, np.concatenate([volume, volume[:1]]), affine))
    # A series lacking an image (a file lost from its folder) where the mask has labels: that
    # slice is named (it was "they lie at its slices 0 to 5 of 0 to 5").
    order = [int(k) for k in series.sort_index()]
    lacking = load_source_series([series.datasets[k] for k in order[:2] + order[3:]])
    labelled = volume.copy()
    labelled[2, 0, 0] = 1
    message = _refusal(tmp_path, lacking, labelled, affine)
    assert "its slices 2 (of 0 to 5) hold labels, but no image of the series lies at them; the " \
           "images lie at its slices 0, 1, 3, 4, 5. Is an image missing" in message
    # Margins of the images' own slices, with labels: outside them.
    wider = np.concatenate([volume, np.ones_like(volume[:, :1])], axis=1)
    assert "holds labels outside the series' images" in _refusal(tmp_path, series, wider, affine)


def test_positions_given_to_two_decimals_match_a_grid_made_of_them(tmp_path):
    """A series whose ImagePositionPatient values have two decimals lies up to about 0.01 mm off
    the grid a file makes of them (dcm2niix, ITK: the first position, the mean step): 1.5% of
    a 0.625 mm slice, which was refused as between the file's voxels, though dcmqi writes it (a
    helper's hunt). Up to 0.02 mm (and a quarter of a voxel) is on the voxel; beyond, refused."""
    datasets = make_ct_series(6, 10, 7, orientation=OBLIQUE, slice_spacing=0.625)
    base = load_source_series(datasets)
    volume = random_labels(sorted_geometry(base).spatial_shape)
    affine = sorted_geometry(base).affine
    normal = np.cross(base.orientation[:3], base.orientation[3:])
    order = [int(k) for k in base.sort_index()]

    def nudged(millimetres):
        copies = [copy.deepcopy(ds) for ds in datasets]
        for step, k in enumerate(order):
            sign = 1 if step % 2 else -1  # alternately either way, as rounding leaves them
            position = base.positions[k] + sign * millimetres * normal
            copies[k].ImagePositionPatient = [f"{v:.6f}" for v in position]
        return load_source_series(copies)

    path = _save(tmp_path, volume, affine)
    mask, _ = volume_mask(path, nudged(0.012), 3)
    np.testing.assert_array_equal(np.asarray(mask), in_given_order(base, volume))
    message = _refusal(tmp_path, nudged(0.04), volume, affine)
    assert "lies between the file's voxels, 0.04 mm from the nearest voxel centre" in message


@pytest.mark.parametrize("name", ["mask.nii.gz", "mask.nii"])  # in memory, and lazy
@pytest.mark.parametrize("axes, flips", [((0, 1, 2), ()), ((2, 1, 0), (0,)), ((1, 2, 0), (1, 2))])
def test_a_cropped_or_larger_file_is_placed_on_the_series_grid(tmp_path, name, axes, flips):
    """3D Slicer saves a segmentation cropped to its labels: such a file (or one larger than
    the series, empty there) is placed on the series' grid voxel for voxel, zeros elsewhere,
    as highdicom's Volume.match_geometry pads and crops it."""
    series = shuffled_series()
    geometry = sorted_geometry(series)
    volume = random_labels(geometry.spatial_shape)  # (6, 10, 7), sorted
    start, stop = (1, 2, 1), (5, 9, 6)
    inside = np.zeros_like(volume)
    inside[1:5, 2:9, 1:6] = volume[1:5, 2:9, 1:6]
    array, affine = cropped(volume, geometry.affine, start, stop, axes, flips)
    path = _save(tmp_path, array, affine, name=name)
    mask, stacked = volume_mask(path, series, 3)
    assert not stacked
    np.testing.assert_array_equal(np.asarray(mask), in_given_order(series, inside))
    matched = hd.Volume.from_nibabel(nibabel.load(path)).match_geometry(geometry)
    np.testing.assert_array_equal(matched.array, inside)
    # Two voxels larger on every side, empty there.
    padded = np.pad(inside, 2)
    array, affine = cropped(padded, geometry.affine @ _translation(-2), (0, 0, 0),
                             padded.shape, axes, flips)
    mask, _ = volume_mask(_save(tmp_path, array, affine, name=name), series, 3)
    np.testing.assert_array_equal(np.asarray(mask), in_given_order(series, inside))
    # On the grid but beside the series, even empty: of another series.
    array, affine = cropped(np.zeros_like(volume), geometry.affine @ _translation((0, 20, 0)),
                             (0, 0, 0), volume.shape, axes, flips)
    with pytest.raises(SegmentationInputError, match="outside every image"):
        volume_mask(_save(tmp_path, array, affine, name=name), series, 3)


def _translation(voxels):
    move = np.eye(4)
    move[:3, 3] = voxels
    return move


def test_a_small_error_of_spacing_or_angle_is_refused_by_its_effect_across_the_image(tmp_path):
    """0.9% larger voxels, or 0.5 degrees of rotation, are within the tolerance for one step
    but put the last pixels of a 256-pixel image 2-3 voxels away: refused, not copied."""
    series = shuffled_series(slices=3, rows=256, columns=256)
    geometry = sorted_geometry(series)
    volume = random_labels(geometry.spatial_shape)
    affine = geometry.affine

    larger = affine.copy()
    larger[:3, 1:3] *= 1.009
    assert "series is 0.8 mm, but the file's voxels are" in _refusal(tmp_path, series, volume, larger)

    angle = np.radians(0.5)
    turn = np.eye(4)
    normal = np.cross(series.orientation[:3], series.orientation[3:])
    # Rodrigues: a rotation by the angle about the slice normal, around the first voxel.
    k = np.array([[0, -normal[2], normal[1]], [normal[2], 0, -normal[0]],
                  [-normal[1], normal[0], 0]])
    turn[:3, :3] = np.eye(3) + np.sin(angle) * k + (1 - np.cos(angle)) * k @ k
    rotated = affine.copy()
    rotated[:3, :3] = turn[:3, :3] @ affine[:3, :3]
    assert "rotated against the series" in _refusal(tmp_path, series, volume, rotated)


def test_a_qform_that_disagrees_with_the_sform_is_refused(tmp_path):
    """nibabel follows the sform, ITK (dcmqi) may follow the qform: the labels' place would
    depend on the reader. Both set and equal (as dcm2niix writes them) is fine."""
    series = shuffled_series()
    volume, array, affine = file_labels(series, (2, 1, 0))
    image = nibabel.Nifti1Image(array, LPS_TO_RAS @ affine)
    image.set_qform(LPS_TO_RAS @ affine, code=1)
    image.set_sform(LPS_TO_RAS @ affine, code=1)
    agreeing = tmp_path / "agree.nii.gz"
    image.to_filename(agreeing)
    np.testing.assert_array_equal(np.asarray(volume_mask(agreeing, series, 3)[0]),
                                  in_given_order(series, volume))

    flipped, flipped_affine = flip(array, affine, 2)
    image.set_qform(LPS_TO_RAS @ flipped_affine, code=1)  # the slices the other way round
    disagreeing = tmp_path / "disagree.nii.gz"
    image.to_filename(disagreeing)
    with pytest.raises(SegmentationInputError, match="sform and a qform that disagree"):
        volume_mask(disagreeing, series, 3)

    # Neither form (nibabel's Nifti1Image(array, None)): nibabel made up an affine centred on
    # the volume and the labels were placed by it, where ITK (dcmqi) puts them elsewhere.
    formless = tmp_path / "formless.nii.gz"
    nibabel.Nifti1Image(array, None).to_filename(formless)
    with pytest.raises(SegmentationInputError, match="has no orientation: its sform_code and "
                                                     "qform_code are both 0"):
        volume_mask(formless, series, 3)


def test_arrays_follow_the_given_order_and_wrong_shapes_are_refused():
    series = shuffled_series(slices=4, rows=5, columns=6)
    labels = random_labels((4, 5, 6))
    mask, stacked = volume_mask(da.from_array(labels, chunks=2), series, 3)
    assert not stacked
    np.testing.assert_array_equal(np.asarray(mask), labels)
    with pytest.raises(SegmentationInputError, match=r"expected labels \(4, 5, 6\)"):
        volume_mask(labels[:3], series, 3)
    with pytest.raises(SegmentationInputError, match="stacks 2 segment planes"):
        volume_mask(np.zeros((4, 5, 6, 2), bool), series, 3)
    # Floating point without a segment axis is one segment, as in highdicom.
    with pytest.raises(SegmentationTypeError, match="floating point without a segment axis"):
        volume_mask(labels.astype(float), series, 3)
    mask, stacked = volume_mask(labels / 3.0, series, 1)
    assert stacked and mask.shape == (4, 5, 6, 1)
    np.testing.assert_array_equal(np.asarray(mask)[..., 0], labels / 3.0)
    one = load_source_series(make_ct_series(1, 5, 6))
    mask, stacked = volume_mask(np.ones((5, 6, 3), bool), one, 3)
    assert stacked and mask.shape == (1, 5, 6, 3)


def test_without_nibabel_the_error_names_the_extra(tmp_path, monkeypatch):
    series = shuffled_series()
    geometry = sorted_geometry(series)
    path = _save(tmp_path, random_labels(geometry.spatial_shape), geometry.affine)
    monkeypatch.setitem(sys.modules, "nibabel", None)  # as if it were not installed
    with pytest.raises(MissingDependencyError, match=r"pip install 'daskseg\[nifti\]'"):
        volume_mask(path, series, 3)


def test_an_uncompressed_file_cut_short_is_refused_before_any_work(tmp_path):
    # Its slabs are read on the workers, where the cut failed as nibabel's ValueError ("not
    # enough data in file"); a .nii.gz cut short already failed here, as unreadable.
    series = shuffled_series()
    volume, array, affine = file_labels(series, (2, 1, 0))
    whole = _save(tmp_path, array, affine, name="whole.nii")
    data = whole.read_bytes()
    np.testing.assert_array_equal(np.asarray(volume_mask(whole, series, 3)[0]),
                                  in_given_order(series, volume))
    cut = tmp_path / "cut.nii"
    cut.write_bytes(data[:-100])
    with pytest.raises(SegmentationInputError, match=f"cut short: {len(data) - 100} bytes"):
        volume_mask(cut, series, 3)


@settings(max_examples=40, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(case=placement_cases(), seed=st.integers(0, 2**16),
       name=st.sampled_from(["mask.nii", "mask.nii.gz"]))
def test_any_orientation_axis_order_flip_and_crop_is_placed_as_highdicom_places_it(
        tmp_path_factory, case, seed, name):
    """Never a misplaced SEG: a file of labels in any orientation, axis order, flips and crop
    gives each series image its own voxels (zeros outside the box), as highdicom's
    ``Volume.match_geometry`` places them."""
    series, inside, array, affine = placement_of(case, seed)
    path = _save(tmp_path_factory.mktemp("nifti"), array, affine, name)
    mask, stacked = volume_mask(path, series, 3)
    assert not stacked
    np.testing.assert_array_equal(np.asarray(mask), in_given_order(series, inside))
    # NIfTI-1 holds the affine in float32: a few 1e-5 of a voxel off, past highdicom's
    # default tolerance (1e-5) for a file far from the origin.
    matched = hd.Volume.from_nibabel(nibabel.load(path)).match_geometry(sorted_geometry(series),
                                                                        tol=1e-3)
    np.testing.assert_array_equal(matched.array, inside)


@settings(max_examples=40, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(case=placement_cases(), seed=st.integers(0, 2**16), axis=st.integers(0, 2),
       amount=st.floats(0.2, 0.8), rotate=st.booleans(),
       name=st.sampled_from(["mask.nii", "mask.nii.gz"]))
def test_a_file_off_the_series_grid_is_refused(tmp_path_factory, case, seed, axis, amount,
                                               rotate, name):
    """Never a misplaced SEG: the same file moved by part of a voxel along one of its axes, or
    turned by 0.15-0.45 radians about one, is refused, never rounded onto the series."""
    series, _, array, affine = placement_of(case, seed)
    moved = affine.copy()
    if rotate:
        angle = 0.05 + amount / 2  # 0.15-0.45 rad
        turn = np.eye(3)
        i, j = [k for k in range(3) if k != axis]
        turn[[i, i, j, j], [i, j, i, j]] = [np.cos(angle), -np.sin(angle), np.sin(angle),
                                            np.cos(angle)]
        moved[:3, :3] = affine[:3, :3] @ turn  # about the file's first voxel
    else:
        moved[:3, 3] += affine[:3, axis] * amount
    path = _save(tmp_path_factory.mktemp("nifti"), array, moved, name)
    with pytest.raises(SegmentationInputError):
        volume_mask(path, series, 3)
