"""NRRD masks of series: matched to the series by their geometry (space, space directions,
space origin) as NIfTI files are, written to SEGs that highdicom reads back as the labels."""

from __future__ import annotations

import json
import pathlib
import shutil
import subprocess
import sys

import highdicom as hd
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from daskseg import MissingDependencyError, SegmentationInputError, write_segmentation
from daskseg._series import load_source_series
from daskseg._volume import volume_mask
from daskseg.cli import main
from daskseg.synthetic import make_ct_series, make_segment_descriptions

from _geometry import (
    LPS_TO_RAS,
    OBLIQUE,
    file_labels,
    in_given_order,
    permute,
    placement_cases,
    placement_of,
    random_labels,
    shuffled_series,
    sorted_geometry,
)

nrrd = pytest.importorskip("nrrd")

LPS, RAS = "left-posterior-superior", "right-anterior-superior"


def _header(affine_lps, space=LPS):
    """The geometry fields of a file whose axis a steps by column a of the affine (LPS+ mm)."""
    affine = LPS_TO_RAS @ affine_lps if space.lower() in (RAS, "ras") else affine_lps
    return {"space": space, "space directions": affine[:3, :3].T, "space origin": affine[:3, 3]}


def _save(folder, array, header, name="mask.nrrd", encoding="gzip"):
    path = folder / name
    # Fortran order: the array's axis 0 is the file's first (fastest) axis, as in the header.
    nrrd.write(str(path), array, {"encoding": encoding, **header}, index_order="F")
    return path


def _series_folder(folder, slices=6, rows=24, columns=20, **options):
    """A CT series saved as files (in slice order) and its datasets."""
    datasets = make_ct_series(slices, rows, columns, **options)
    folder.mkdir()
    for ds in datasets:
        ds.save_as(folder / f"{ds.SOPInstanceUID}.dcm", enforce_file_format=True)
    return datasets


def _pixels(path, datasets):
    """highdicom's labels of a SEG, one plane per source image in the order given."""
    return hd.seg.segread(path).get_pixels_by_source_instance(
        [ds.SOPInstanceUID for ds in datasets], combine_segments=True,
        assert_missing_frames_are_empty=True)


@pytest.mark.parametrize(
    ("space", "axes", "flips", "name", "encoding"),
    [
        (LPS, (2, 1, 0), (), "mask.nrrd", "gzip"),  # (column, row, slice): as Slicer, ITK write
        ("RAS", (2, 1, 0), (), "mask.nrrd", "raw"),
        ("LPS", (0, 1, 2), (1,), "mask.nhdr", "raw"),  # detached header and data
        (RAS, (1, 2, 0), (0, 2), "mask.nhdr", "gzip"),
        (LPS, (0, 2, 1), (0, 1, 2), "mask.nrrd", "raw"),
    ],
)
def test_nrrd_in_any_space_axis_order_and_flips_is_matched_to_the_series(
    tmp_path, space, axes, flips, name, encoding
):
    series = shuffled_series()
    volume, array, affine = file_labels(series, axes, flips)
    path = _save(tmp_path, array, _header(affine, space), name, encoding)
    if name.endswith(".nhdr"):
        assert "data file" in nrrd.read_header(str(path))  # the data is in a file of its own

    mask, stacked = volume_mask(path, series, 3)
    assert not stacked and mask.shape == (6, 10, 7)
    np.testing.assert_array_equal(mask, in_given_order(series, volume))


def test_the_first_axis_of_the_file_is_the_fastest(tmp_path):
    """A file written by hand (not by pynrrd): its samples x fastest, as the NRRD format says."""
    series = shuffled_series()
    geometry = sorted_geometry(series)
    volume = random_labels(geometry.spatial_shape)  # (slice, row, column)
    affine = geometry.affine  # columns: one step along a slice, a row, a column
    vector = lambda v: "(" + ",".join(repr(float(x)) for x in v) + ")"  # noqa: E731
    header = "\n".join([
        "NRRD0004", "type: uint8", "dimension: 3", f"space: {LPS}",
        f"sizes: {volume.shape[2]} {volume.shape[1]} {volume.shape[0]}",
        "space directions: " + " ".join(vector(affine[:3, a]) for a in (2, 1, 0)),
        "kinds: domain domain domain", "encoding: raw", f"space origin: {vector(affine[:3, 3])}",
    ])
    path = tmp_path / "by-hand.nrrd"
    # C order of (slice, row, column): the column index varies fastest.
    path.write_bytes(header.encode("ascii") + b"\n\n" + volume.tobytes())

    mask, _ = volume_mask(path, series, 3)
    np.testing.assert_array_equal(mask, in_given_order(series, volume))


def test_nrrd_with_one_volume_per_segment(tmp_path):
    """A non-spatial first axis (space direction 'none', kind list), as 3D Slicer writes."""
    series = shuffled_series(orientation=(1, 0, 0, 0, 1, 0))
    geometry = sorted_geometry(series)
    planes = (random_labels((*geometry.spatial_shape, 3), seed=2) > 1).astype(np.uint8)
    array, affine = permute(planes, geometry.affine, (2, 1, 0))  # (column, row, slice, segment)
    header = _header(affine)
    header["space directions"] = np.vstack([np.full(3, np.nan), header["space directions"]])
    header["kinds"] = ["list", "domain", "domain", "domain"]
    path = _save(tmp_path, np.moveaxis(array, 3, 0), header)
    assert nrrd.read_header(str(path))["sizes"].tolist() == [3, 7, 10, 6]

    mask, stacked = volume_mask(path, series, 3)
    assert stacked
    np.testing.assert_array_equal(mask, in_given_order(series, planes))


def test_a_slicer_segmentation_gives_its_segments_in_slicer_order(tmp_path):
    """3D Slicer's .seg.nrrd: segment k is the value Segment{k}_LabelValue of layer
    Segment{k}_Layer; several segments share a layer, overlapping ones take more layers."""
    series = shuffled_series(orientation=(1, 0, 0, 0, 1, 0))
    geometry = sorted_geometry(series)
    shape = geometry.spatial_shape
    labels = random_labels(shape, seed=4)  # values 0..3
    stored = np.asarray([0, 5, 9, 2], np.uint8)[labels]  # Slicer's label values 5, 9, 2
    array, affine = permute(stored, geometry.affine, (2, 1, 0))
    header = {**_header(affine), "Segment0_LabelValue": "5", "Segment0_Layer": "0",
              "Segment1_LabelValue": "9", "Segment1_Layer": "0",
              "Segment2_LabelValue": "2", "Segment2_Layer": "0"}
    mask, stacked = volume_mask(_save(tmp_path, array, header, "one.seg.nrrd"), series, 3)
    assert not stacked
    np.testing.assert_array_equal(mask, in_given_order(series, labels))

    # Two layers: layer 0 holds segments 0 (value 1) and 1 (value 2), layer 1 segment 2 (1).
    second = (random_labels(shape, seed=5) > 2).astype(np.uint8)
    layered = np.stack([np.where(labels == 3, 0, labels), second], axis=-1)
    array, affine = permute(layered, geometry.affine, (2, 1, 0))
    header = _header(affine)
    header["space directions"] = np.vstack([np.full(3, np.nan), header["space directions"]])
    header.update({"kinds": ["list", "domain", "domain", "domain"],
                   "Segment0_LabelValue": "1", "Segment0_Layer": "0",
                   "Segment1_LabelValue": "2", "Segment1_Layer": "0",
                   "Segment2_LabelValue": "1", "Segment2_Layer": "1"})
    path = _save(tmp_path, np.moveaxis(array, 3, 0), header, "layers.seg.nrrd")
    mask, stacked = volume_mask(path, series, 3)
    assert stacked
    expected = np.stack([layered[..., 0] == 1, layered[..., 0] == 2, second == 1], axis=-1)
    np.testing.assert_array_equal(mask, in_given_order(series, expected))

    # Cropped to its labels, as Slicer saves a segmentation by default: placed on the
    # series' grid, zeros elsewhere.
    box = stored[1:5, 2:8, 1:6]
    moved = geometry.affine.copy()
    moved[:3, 3] += geometry.affine[:3, :3] @ np.array([1.0, 2.0, 1.0])
    array, affine = permute(box, moved, (2, 1, 0))
    header = {**_header(affine), "Segment0_LabelValue": "5", "Segment0_Layer": "0",
              "Segment1_LabelValue": "9", "Segment1_Layer": "0",
              "Segment2_LabelValue": "2", "Segment2_Layer": "0"}
    mask, _ = volume_mask(_save(tmp_path, array, header, "cropped.seg.nrrd"), series, 3)
    inside = np.zeros_like(labels)
    inside[1:5, 2:8, 1:6] = labels[1:5, 2:8, 1:6]
    np.testing.assert_array_equal(mask, in_given_order(series, inside))

    # A value that no segment names is refused.
    array, affine = permute(stored, geometry.affine, (2, 1, 0))
    header = {**_header(affine), "Segment0_LabelValue": "5", "Segment1_LabelValue": "9"}
    with pytest.raises(SegmentationInputError, match="holds the value 2, which none"):
        volume_mask(_save(tmp_path, array, header, "unnamed.seg.nrrd"), series, 2)


@pytest.mark.parametrize("space", [LPS, "RAS"])
def test_a_seg_of_an_nrrd_holds_its_labels_in_series_order(tmp_path, thread_client, space):
    datasets = make_ct_series(6, 24, 20, orientation=OBLIQUE)
    given = [datasets[k] for k in (3, 0, 5, 1, 4, 2)]  # not in slice order
    series = load_source_series(given)
    geometry = sorted_geometry(series)
    volume = random_labels(geometry.spatial_shape, seed=3)
    array, affine = permute(volume, geometry.affine, (2, 1, 0))
    path = _save(tmp_path, array, _header(affine, space))

    out = write_segmentation(path, given, make_segment_descriptions(3), tmp_path / "seg.dcm",
                             client=thread_client)
    np.testing.assert_array_equal(_pixels(out, given), in_given_order(series, volume))


def _refusal(tmp_path, array, header, client, name="mask.nrrd"):
    """The message of the refusal to write a SEG of ``array``; nothing is written."""
    datasets = make_ct_series(6, 24, 20, orientation=OBLIQUE)
    path = _save(tmp_path, array, header, name)
    before = sorted(tmp_path.iterdir())
    with pytest.raises(SegmentationInputError) as info:
        write_segmentation(path, datasets, make_segment_descriptions(3), tmp_path / "seg.dcm",
                           client=client)
    assert sorted(tmp_path.iterdir()) == before
    return str(info.value)


def test_nrrd_that_does_not_match_is_refused_before_anything_is_written(tmp_path, thread_client):
    series = load_source_series(make_ct_series(6, 24, 20, orientation=OBLIQUE))
    geometry = sorted_geometry(series)
    volume = random_labels(geometry.spatial_shape)
    array, affine = permute(volume, geometry.affine, (2, 1, 0))

    def refusal(array, header):
        return _refusal(tmp_path, array, header, thread_client)

    shifted = affine.copy()
    shifted[:3, 3] += affine[:3, 1]  # one row down
    assert "The NRRD mask does not match" in refusal(array, _header(shifted))
    assert "shifted by" in refusal(array, _header(shifted))

    coarse = affine.copy()
    coarse[:3, 0] *= 2  # columns twice as wide
    assert "along a row of the series is 0.7 mm" in refusal(array, _header(coarse))

    between = affine.copy()
    between[:3, 3] += 0.5 * affine[:3, 2]  # half a slice
    assert "lies between the file's voxels" in refusal(array, _header(between))

    wrong_space = _header(affine)  # LPS+ coordinates, but the file says RAS
    wrong_space["space"] = RAS
    assert f"its space were {LPS} rather than {RAS}" in refusal(array, wrong_space)

    # One slice more than the series, with labels: of another series, or shifted.
    larger = np.concatenate([array, array[:, :, :1]], axis=2)
    assert "hold labels, but no image of the series lies at them" in refusal(
        larger, _header(affine))

    for field in ("space", "space origin", "space directions"):
        header = _header(affine)
        del header[field]
        if field == "space":
            header["space dimension"] = 3
        assert f"no '{field}' field" in refusal(array, header)

    scanner = {**_header(affine), "space": "scanner-xyz"}
    assert "in space 'scanner-xyz'; only the patient spaces" in refusal(array, scanner)

    flat = {"space": LPS, "space directions": affine[:2, :2].T, "space origin": affine[:2, 3]}
    assert "has 2 axes" in refusal(array[:, :, 0], flat)


def test_a_file_that_is_not_nrrd_is_refused(tmp_path):
    series = shuffled_series()
    path = tmp_path / "mask.nrrd"
    path.write_bytes(b"not an NRRD file\n")
    with pytest.raises(SegmentationInputError, match="Could not read the mask .* as NRRD"):
        volume_mask(path, series, 3)
    with pytest.raises(SegmentationInputError, match="does not exist"):
        volume_mask(tmp_path / "absent.nrrd", series, 3)


def test_without_pynrrd_the_error_names_the_extra(tmp_path, monkeypatch):
    series = shuffled_series()
    geometry = sorted_geometry(series)
    path = _save(tmp_path, random_labels(geometry.spatial_shape), _header(geometry.affine))
    monkeypatch.setitem(sys.modules, "nrrd", None)  # as if it were not installed
    with pytest.raises(MissingDependencyError, match=r"pip install 'daskseg\[nrrd\]'"):
        volume_mask(path, series, 3)


def test_encode_an_nrrd_label_volume_of_a_ct_series_folder(tmp_path):
    from test_cli import DCMQI

    datasets = _series_folder(tmp_path / "ct")
    series = load_source_series(datasets)
    geometry = sorted_geometry(series)
    volume = random_labels(geometry.spatial_shape, seed=4) % 3  # segments 1 and 2
    array, affine = permute(volume, geometry.affine, (2, 1, 0))
    path = _save(tmp_path, array, _header(affine))
    (tmp_path / "dcmqi.json").write_text(json.dumps(DCMQI))

    out = tmp_path / "seg.dcm"
    assert main(["encode", str(path), str(tmp_path / "ct"), "-o", str(out), "--metadata",
                 str(tmp_path / "dcmqi.json"), "--threads", "2", "--quiet"]) == 0
    assert hd.seg.segread(out).SegmentSequence[1].SegmentLabel == "stroma"
    np.testing.assert_array_equal(_pixels(out, datasets), in_given_order(series, volume))


def test_an_nrrd_written_by_dcmqi_becomes_a_seg_of_its_labels(tmp_path, thread_client):
    """dcmqi's segimage2itkimage writes the labels of a SEG as ITK does: LPS, short, gzip."""
    tool = shutil.which("segimage2itkimage") or shutil.which(
        "segimage2itkimage", path=str(pathlib.Path(sys.executable).parent))
    if tool is None:
        pytest.skip("dcmqi's segimage2itkimage is not installed (pip install dcmqi)")
    datasets = make_ct_series(6, 24, 20, orientation=OBLIQUE)
    labels = random_labels((6, 24, 20), seed=5) % 3  # frame k for datasets[k]
    first = write_segmentation(labels, datasets, make_segment_descriptions(2),
                               tmp_path / "first.dcm", client=thread_client)
    subprocess.run([tool, "--inputDICOM", str(first), "--outputDirectory", str(tmp_path),
                    "--mergeSegments", "-t", "nrrd"], check=True, capture_output=True, timeout=120)
    path = tmp_path / "1.nrrd"
    assert nrrd.read_header(str(path))["space"] == LPS

    out = write_segmentation(path, datasets, make_segment_descriptions(2), tmp_path / "seg.dcm",
                             client=thread_client)
    np.testing.assert_array_equal(_pixels(out, datasets), labels)


@settings(max_examples=40, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(case=placement_cases(), seed=st.integers(0, 2**16),
       space=st.sampled_from([LPS, RAS, "LPS", "RAS"]),
       name_and_encoding=st.sampled_from([("mask.nrrd", "gzip"), ("mask.nrrd", "raw"),
                                          ("mask.nhdr", "raw")]))
def test_any_orientation_axis_order_flip_and_crop_is_placed_on_the_series(
        tmp_path_factory, case, seed, space, name_and_encoding):
    """Never a misplaced SEG: a file of labels in any space, orientation, axis order, flips and
    crop gives each series image its own voxels, zeros outside the box."""
    series, inside, array, affine = placement_of(case, seed)
    path = _save(tmp_path_factory.mktemp("nrrd"), array, _header(affine, space),
                 *name_and_encoding)
    mask, stacked = volume_mask(path, series, 3)
    assert not stacked
    np.testing.assert_array_equal(np.asarray(mask), in_given_order(series, inside))
