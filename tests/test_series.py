"""Source series: headers read without pixels, checked, and sorted along the slice normal."""

from __future__ import annotations

import copy
import random

import highdicom as hd
import numpy as np
import pydicom
import pytest

from daskseg import SegmentationInputError, SegmentationTypeError
from daskseg._series import is_volume_source, load_source_series
from daskseg.synthetic import make_ct_series, make_slide

OBLIQUE = (0.8660254037844387, 0.5, 0.0, -0.5, 0.8660254037844387, 0.0)


def _save(series, folder, names=None):
    folder.mkdir(exist_ok=True)
    paths = []
    for k, ds in enumerate(series):
        path = folder / (names[k] if names else f"{k:03d}.dcm")
        ds.save_as(path, enforce_file_format=True)
        paths.append(path)
    return paths


def test_shuffled_datasets_keep_their_order_and_sort_along_the_normal():
    series = make_ct_series(7, 16, 12, orientation=OBLIQUE)
    shuffled = series[:]
    random.Random(3).shuffle(shuffled)
    loaded = load_source_series(shuffled)
    assert loaded.sop_instance_uids == tuple(ds.SOPInstanceUID for ds in shuffled)
    assert (loaded.rows, loaded.columns, loaded.number_of_frames) == (16, 12, 7)
    ordered = [loaded.sop_instance_uids[k] for k in loaded.sort_index()]
    # make_ct_series steps along row x column direction; highdicom's volumes run the other way.
    assert ordered == [ds.SOPInstanceUID for ds in reversed(series)]
    assert ordered == [ds.SOPInstanceUID for ds in hd.spatial.sort_datasets(shuffled)]


def test_folder_with_other_files_is_read_without_pixels(tmp_path):
    series = make_ct_series(6, 8, 8, pixel_data=True)
    names = [f"IMG{n}" for n in (5, 2, 9, 1, 7, 3)]
    _save(series, tmp_path / "ct", names)
    (tmp_path / "ct" / "notes.txt").write_text("not DICOM")
    loaded = load_source_series(tmp_path / "ct")
    assert loaded.number_of_frames == 6
    assert all("PixelData" not in ds for ds in loaded.datasets)
    # A folder's files have no given order: they are taken in highdicom's slice order.
    assert list(loaded.sop_instance_uids) == [ds.SOPInstanceUID for ds in reversed(series)]
    assert list(loaded.sort_index()) == list(range(6))


def test_paths_and_datasets_mixed_keep_the_given_order(tmp_path):
    series = make_ct_series(4, 8, 8)
    paths = _save(series, tmp_path)
    loaded = load_source_series([paths[2], series[0], paths[3], paths[1]])
    expected = [series[k].SOPInstanceUID for k in (2, 0, 3, 1)]
    assert list(loaded.sop_instance_uids) == expected
    np.testing.assert_allclose(loaded.positions[:, 2], [-295.0, -300.0, -292.5, -297.5])


def test_multiframe_enhanced_image_gives_its_frames():
    series = make_ct_series(5, 8, 8, pixel_data=True, orientation=OBLIQUE)
    enhanced = hd.legacy.LegacyConvertedEnhancedCTImage(
        series, series_instance_uid=hd.UID(), series_number=2, sop_instance_uid=hd.UID(),
        instance_number=1,
    )
    loaded = load_source_series(enhanced)
    assert loaded.multiframe and loaded.number_of_frames == 5
    assert set(loaded.sop_instance_uids) == {enhanced.SOPInstanceUID}
    frame_positions = [
        item.PlanePositionSequence[0].ImagePositionPatient
        for item in enhanced.PerFrameFunctionalGroupsSequence
    ]
    np.testing.assert_allclose(loaded.positions, np.array(frame_positions, dtype=float))
    np.testing.assert_allclose(loaded.orientation, OBLIQUE, atol=1e-6)


def test_which_sources_are_volumes(tmp_path):
    series = make_ct_series(3, 8, 8)
    paths = _save(series, tmp_path / "ct")
    assert is_volume_source(series) and is_volume_source(tmp_path / "ct")
    assert is_volume_source(series[0]) and is_volume_source(paths[0])
    assert not is_volume_source(make_slide(1024, 1024))


def _message(source):
    with pytest.raises(SegmentationInputError) as info:
        load_source_series(source)
    return str(info.value)


def test_two_series_in_one_folder_are_refused(tmp_path):
    _save(make_ct_series(3, 8, 8), tmp_path, ["a1", "a2", "a3"])
    _save(make_ct_series(2, 8, 8), tmp_path, ["b1", "b2"])
    message = _message(tmp_path)
    assert "2 different SeriesInstanceUIDs" in message and "(3 images)" in message


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        (lambda s: delattr(s[2], "ImagePositionPatient"), "lacks ImagePositionPatient"),
        (lambda s: setattr(s[3], "ImagePositionPatient", s[1].ImagePositionPatient),
         "2 source frames lie at the same position"),
        (lambda s: s.append(s[0]), "is given 2 times"),
        (lambda s: setattr(s[1], "Rows", 9), "differ in size: 8 x 8 (4 images), 9 x 8 (1 images)"),
        (lambda s: setattr(s[4], "ImageOrientationPatient", list(OBLIQUE)),
         "do not share one ImageOrientationPatient"),
        (lambda s: setattr(s[0], "PixelSpacing", [0.5, 0.5]), "do not share one PixelSpacing"),
        (lambda s: setattr(s[0], "FrameOfReferenceUID", hd.UID()),
         "2 different FrameOfReferenceUIDs"),
        (lambda s: setattr(s[2], "StudyInstanceUID", hd.UID()), "2 different StudyInstanceUIDs"),
        (lambda s: delattr(s[2], "StudyInstanceUID"), "lacks StudyInstanceUID"),
        # Side by side in one plane, 20 mm apart along x: one distance along the normal, which
        # highdicom refuses ("Plane positions must not contain duplicates").
        (lambda s: [setattr(ds, "ImagePositionPatient", [20.0 * k, 0.0, -300.0])
                    for k, ds in enumerate(s)], "5 source frames lie in one plane (-300 mm"),
        (lambda s: [setattr(ds, "ImageOrientationPatient", [1, 0, 0, 1, 0, 0]) for ds in s],
         "gives rows and columns one direction"),
        (lambda s: setattr(s[2], "ImagePositionPatient", [1.0, 2.0]),
         "is [1.0, 2.0], not 3 numbers"),
        (lambda s: setattr(s[2], "ImageOrientationPatient", [1, 0, 0, 0, 1]), "not 6 numbers"),
        (lambda s: setattr(s[2], "PixelSpacing", [0.5]), "not 2 numbers"),
    ],
)
def test_inconsistent_series_are_refused(change, expected):
    series = make_ct_series(5, 8, 8)
    change(series)
    assert expected in _message(series)


def test_a_tiled_image_in_a_series_and_bad_kinds_are_refused(tmp_path):
    assert "is a tiled image" in _message([make_ct_series(1, 8, 8)[0], make_slide(512, 512)])
    assert "holds no DICOM image" in _message(tmp_path)
    with pytest.raises(SegmentationTypeError):
        load_source_series(42)
    with pytest.raises(SegmentationTypeError):
        load_source_series([make_ct_series(1, 8, 8)[0], 42])
    (tmp_path / "x.txt").write_text("no")
    assert "is not a DICOM file" in _message([tmp_path / "x.txt"])
    assert "does not exist" in _message([tmp_path / "missing.dcm"])


def test_a_functional_group_in_both_places_with_other_values_is_refused():
    """PS3.3 C.7.6.16 puts a functional group in the shared or the per-frame groups: where both
    hold it with other values, the frames would be sorted by one and the header take the other
    (highdicom's takes the shared one), so neither is guessed. The same values in both pass."""
    series = make_ct_series(4, 8, 8, pixel_data=True)
    enhanced = hd.legacy.LegacyConvertedEnhancedCTImage(
        series, series_instance_uid=hd.UID(), series_number=2, sop_instance_uid=hd.UID(),
        instance_number=1,
    )
    shared = enhanced.SharedFunctionalGroupsSequence[0]
    for item in enhanced.PerFrameFunctionalGroupsSequence:
        item.PlaneOrientationSequence = copy.deepcopy(shared.PlaneOrientationSequence)
    assert load_source_series(enhanced).number_of_frames == 4  # the same values: no doubt
    flipped = copy.deepcopy(enhanced)
    for item in flipped.PerFrameFunctionalGroupsSequence:
        item.PlaneOrientationSequence[0].ImageOrientationPatient = [1, 0, 0, 0, -1, 0]
    message = _message(flipped)
    assert "PlaneOrientationSequence > ImageOrientationPatient [1, 0, 0, 0, 1, 0] in its shared" in (
        message)
    assert "[1, 0, 0, 0, -1, 0] in frame 1's own" in message

    # One frame's position only in the shared groups, the others' in their own.
    moved = copy.deepcopy(enhanced)
    shared = moved.SharedFunctionalGroupsSequence[0]
    shared.PlanePositionSequence = moved.PerFrameFunctionalGroupsSequence[2].PlanePositionSequence
    del moved.PerFrameFunctionalGroupsSequence[2].PlanePositionSequence
    assert "PlanePositionSequence > ImagePositionPatient" in _message(moved)


def test_multiframe_with_other_images_is_refused():
    series = make_ct_series(3, 8, 8, pixel_data=True)
    enhanced = hd.legacy.LegacyConvertedEnhancedCTImage(
        series, series_instance_uid=hd.UID(), series_number=2, sop_instance_uid=hd.UID(),
        instance_number=1,
    )
    assert "pass one multi-frame image alone" in _message([enhanced, series[0]])


def test_enhanced_images_of_one_frame_each_are_refused_as_a_series():
    """Each keeps its geometry in functional groups; as highdicom, one goes alone."""
    series = make_ct_series(3, 8, 8, pixel_data=True)
    enhanced = [
        hd.legacy.LegacyConvertedEnhancedCTImage(
            [ds], series_instance_uid=hd.UID(), series_number=2, sop_instance_uid=hd.UID(),
            instance_number=k + 1,
        )
        for k, ds in enumerate(series)
    ]
    assert all(int(ds.NumberOfFrames) == 1 for ds in enhanced)
    assert "pass one multi-frame image alone" in _message(enhanced)
    assert load_source_series(enhanced[0]).number_of_frames == 1


def test_a_dicomdir_in_the_folder_is_skipped(tmp_path):
    """A folder as CD exports lay it out: a DICOMDIR (its class only in its file meta) and
    the images in subfolders."""
    from pydicom.fileset import FileSet

    series = make_ct_series(4, 8, 8, pixel_data=True)
    files = FileSet()
    for ds in series:
        files.add(ds)
    files.write(tmp_path / "cd")
    assert (tmp_path / "cd" / "DICOMDIR").exists()
    loaded = load_source_series(tmp_path / "cd")
    assert sorted(loaded.sop_instance_uids) == sorted(ds.SOPInstanceUID for ds in series)


def test_headers_of_a_large_folder_are_read_in_parallel(tmp_path):
    series = make_ct_series(40, 8, 8)
    _save(series, tmp_path)
    loaded = load_source_series(tmp_path)
    assert loaded.number_of_frames == 40
    assert isinstance(loaded.datasets[0], pydicom.Dataset)


def test_files_without_preamble_are_images_and_odd_files_are_named(tmp_path):
    """A data set without preamble and file meta (older PACS exports) is read, from a folder
    or a path, as highdicom with force=True and dcmqi read it; where images do not form one
    series, the few odd ones out are named by their files."""
    series = make_ct_series(5, 8, 8)
    paths = _save(series, tmp_path / "ct")
    for path in paths[1:3]:
        ds = pydicom.dcmread(path)
        del ds.file_meta
        ds.preamble = None
        pydicom.dcmwrite(path, ds, enforce_file_format=False, implicit_vr=True,
                         little_endian=True)
        assert path.read_bytes()[128:132] != b"DICM"
    (tmp_path / "ct" / "notes.txt").write_text("0008,0016 is not an element of this file")
    loaded = load_source_series(tmp_path / "ct")
    assert sorted(loaded.sop_instance_uids) == sorted(ds.SOPInstanceUID for ds in series)
    assert load_source_series(paths).number_of_frames == 5
    other = make_ct_series(1, 8, 8)[0]
    other.FrameOfReferenceUID = series[0].FrameOfReferenceUID
    _save([other], tmp_path / "ct", ["stray.dcm"])
    message = _message(tmp_path / "ct")
    assert "(5 images)" in message and f"{tmp_path / 'ct' / 'stray.dcm'}, SOP instance" in message
    twice = tmp_path / "ct" / "copy.dcm"
    twice.write_bytes(paths[0].read_bytes())
    (tmp_path / "ct" / "stray.dcm").unlink()
    assert f"given 2 times ({twice}, {paths[0]})" in _message(tmp_path / "ct") or (
        f"given 2 times ({paths[0]}, {twice})" in _message(tmp_path / "ct"))


def test_a_lone_file_without_preamble_is_read_as_in_a_series(tmp_path):
    """One image without the preamble and 'DICM' (its file meta kept, or none) is the image it
    is in a series: a source of one slice, not a file refused as not DICOM."""
    from daskseg._source import load_source_image

    series = make_ct_series(2, 8, 8)
    path, bare = _save(series, tmp_path)
    path.write_bytes(path.read_bytes()[132:])  # file meta kept, no preamble or prefix
    ds = pydicom.dcmread(bare)
    del ds.file_meta
    pydicom.dcmwrite(bare, ds, enforce_file_format=False, implicit_vr=True, little_endian=True)
    with pytest.raises(pydicom.errors.InvalidDicomError):
        pydicom.dcmread(path)
    for lone, uid in ((path, series[0].SOPInstanceUID), (bare, series[1].SOPInstanceUID)):
        assert is_volume_source(lone) and is_volume_source([lone])
        assert load_source_series(lone).sop_instance_uids == (uid,)
    slide = make_slide(64, 64, tile_size=(32, 32))
    slide.save_as(tmp_path / "slide.dcm", enforce_file_format=True)
    (tmp_path / "slide.dcm").write_bytes((tmp_path / "slide.dcm").read_bytes()[132:])
    assert not is_volume_source(tmp_path / "slide.dcm")
    assert load_source_image(tmp_path / "slide.dcm").SOPInstanceUID == slide.SOPInstanceUID


def test_a_folder_in_a_list_a_dicomdir_and_a_radiograph_are_named(tmp_path):
    """What is not an image of a series, given where one is expected, is refused saying what
    it is (an IsADirectoryError, a slide's missing attributes, missing geometry before)."""
    from pydicom.fileset import FileSet

    from daskseg._source import load_source_image

    series = make_ct_series(3, 8, 8, pixel_data=True)
    paths = _save(series, tmp_path / "ct")
    (tmp_path / "ct" / "sub").mkdir()
    for given in ([*paths, tmp_path / "ct" / "sub"], [tmp_path / "ct"]):
        with pytest.raises(SegmentationInputError, match="is a folder: pass a folder holding"):
            load_source_series(given)
    files = FileSet()
    for ds in series:
        files.add(ds)
    files.write(tmp_path / "cd")
    dicomdir = tmp_path / "cd" / "DICOMDIR"
    for load, given in ((load_source_series, [dicomdir, *paths]),
                        (load_source_image, dicomdir)):
        with pytest.raises(SegmentationInputError,
                           match=r"is a DICOMDIR .* pass the images it indexes \(a series: the"):
            load(given)
    assert not is_volume_source(dicomdir)
    radiograph = series[0]
    for keyword in ("ImagePositionPatient", "ImageOrientationPatient", "FrameOfReferenceUID",
                    "PixelSpacing"):
        delattr(radiograph, keyword)
    # A CT image that lost its geometry (an anonymizer's) lacks it; it is no projection image.
    with pytest.raises(SegmentationInputError, match="lacks FrameOfReferenceUID, "
                                                     "ImagePositionPatient, ImageOrientationPat"):
        load_source_series(radiograph)
    radiograph.SOPClassUID = "1.2.840.10008.5.1.4.1.1.1.1"  # Digital X-Ray, For Presentation
    with pytest.raises(SegmentationInputError,
                       match="no plane position or orientation .*Digital X-Ray.* use highdicom"):
        load_source_series(radiograph)
