"""Series and label volumes in known geometry, for the tests of masks that carry their own
(NIfTI, NRRD): what the file's axes are, and where the series' images lie in them."""

from __future__ import annotations

import random

import highdicom as hd
import numpy as np
from hypothesis import strategies as st

from daskseg._series import load_source_series
from daskseg.synthetic import make_ct_series

OBLIQUE = (0.8660254037844387, 0.5, 0.0, -0.5, 0.8660254037844387, 0.0)
LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0, 1.0])


def shuffled_series(orientation=OBLIQUE, slices=6, rows=10, columns=7):
    datasets = make_ct_series(slices, rows, columns, orientation=orientation)
    random.Random(5).shuffle(datasets)
    return load_source_series(datasets)


def sorted_geometry(series):
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


def random_labels(shape, seed=0):
    return np.random.default_rng(seed).integers(0, 4, size=shape, dtype=np.uint8)


def permute(array, affine, axes):
    """The array's axes in another order, and the affine that keeps every voxel in place."""
    return array.transpose(axes + tuple(range(3, array.ndim))), affine[:, [*axes, 3]]


def flip(array, affine, axis):
    """The array flipped along ``axis``, and the affine that keeps every voxel in place."""
    affine = affine.copy()
    affine[:3, 3] += affine[:3, axis] * (array.shape[axis] - 1)
    affine[:3, axis] *= -1
    return np.flip(array, axis), affine


def file_labels(series, axes, flips=(), seed=0):
    """Random labels of the series' sorted volume, and the same voxels as a file's array in
    another axis order and flipped, with the affine (LPS+) that keeps every voxel in place."""
    geometry = sorted_geometry(series)
    volume = random_labels(geometry.spatial_shape, seed)
    array, affine = permute(volume, geometry.affine, axes)
    for axis in flips:
        array, affine = flip(array, affine, axis)
    return volume, array, affine


def in_given_order(series, volume):
    """A volume in highdicom's sorted order, reordered to the series' given order."""
    given = np.empty_like(volume)
    given[series.sort_index()] = volume
    return given


def ct_folder_and_nifti(folder, labels):
    """A CT series of the labels' shape, saved as files in ``folder / "ct"`` (with pixel data,
    as dcmqi needs), and ``labels`` (frame k for series[k]) saved as ``folder /
    "labels.nii.gz"`` as highdicom writes a volume: slices along the normal, axes (column, row,
    slice), RAS+. Returns the series (Datasets, in file order), its folder and the NIfTI path."""
    import nibabel

    series = make_ct_series(*labels.shape, pixel_data=True)
    (folder / "ct").mkdir()
    for ds in series:
        ds.save_as(folder / "ct" / f"{ds.SOPInstanceUID}.dcm", enforce_file_format=True)
    order = hd.spatial.get_dataset_sort_index(series)
    geometry = sorted_geometry(load_source_series(series))
    nibabel.save(geometry.with_array(labels[order]).permute_spatial_axes([2, 1, 0]).to_nibabel(),
                 folder / "labels.nii.gz")
    return series, folder / "ct", folder / "labels.nii.gz"


def cropped(volume, affine, start, stop, axes, flips):
    """The box ``start:stop`` of a sorted volume as a file's array (axes permuted, flipped),
    with the affine that keeps its voxels in place."""
    box = volume[tuple(slice(a, b) for a, b in zip(start, stop))]
    moved = affine.copy()
    moved[:3, 3] += affine[:3, :3] @ np.asarray(start, float)
    array, moved = permute(box, moved, axes)
    for axis in flips:
        array, moved = flip(array, moved, axis)
    return array, moved


@st.composite
def placement_cases(draw):
    """A shuffled series in any orientation, and the box of its sorted volume that a file holds
    (``start``, ``stop``), in any axis order (``axes``), flipped along any of them (``flips``),
    for :func:`cropped`."""
    # A rotation from three angles (any orientation, oblique ones mostly).
    a, b, c = (draw(st.floats(-np.pi, np.pi)) for _ in range(3))
    rz = np.array([[np.cos(a), -np.sin(a), 0], [np.sin(a), np.cos(a), 0], [0, 0, 1]])
    ry = np.array([[np.cos(b), 0, np.sin(b)], [0, 1, 0], [-np.sin(b), 0, np.cos(b)]])
    rx = np.array([[1, 0, 0], [0, np.cos(c), -np.sin(c)], [0, np.sin(c), np.cos(c)]])
    rotation = rz @ ry @ rx
    orientation = tuple(float(v) for v in (*rotation[:, 0], *rotation[:, 1]))
    shape = (draw(st.integers(2, 7)), draw(st.integers(2, 9)), draw(st.integers(2, 9)))
    datasets = make_ct_series(*shape, orientation=orientation,
                              pixel_spacing=(draw(st.sampled_from([0.5, 0.8])), 0.7),
                              slice_spacing=draw(st.sampled_from([1.0, 2.5])))
    draw(st.randoms(use_true_random=False)).shuffle(datasets)
    start = tuple(draw(st.integers(0, n - 1)) for n in shape)
    stop = tuple(draw(st.integers(s + 1, n)) for s, n in zip(start, shape))
    axes = draw(st.permutations([0, 1, 2]))
    flips = draw(st.lists(st.sampled_from([0, 1, 2]), unique=True))
    return load_source_series(datasets), start, stop, tuple(axes), tuple(flips)


def placement_of(case, seed=0):
    """For a :func:`placement_cases` case: its series; random labels of the series' sorted
    volume where the file's box covers it, zeros elsewhere; and the file's array (the box's
    labels, axes permuted and flipped) and affine."""
    series, start, stop, axes, flips = case
    geometry = sorted_geometry(series)
    volume = random_labels(geometry.spatial_shape, seed)
    inside = np.zeros_like(volume)
    box = tuple(slice(s, e) for s, e in zip(start, stop))
    inside[box] = volume[box]
    array, affine = cropped(volume, geometry.affine, start, stop, axes, flips)
    return series, inside, array, affine
