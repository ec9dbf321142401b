"""write_segmentation of a series against highdicom's Segmentation for the same inputs."""

from __future__ import annotations

import copy
import random
import shutil

import highdicom as hd
import numpy as np
import pydicom
import pytest
from distributed import Client
from test_write import HD_OPTIONS, MATRIX, dataset_differences, dciodvfy_errors

from daskseg import SegmentationInputError, read_segmentation, write_segmentation
from daskseg.synthetic import make_ct_series, make_segment_descriptions

OBLIQUE = (0.8660254037844387, 0.5, 0.0, -0.5, 0.8660254037844387, 0.0)
SLICES, ROWS, COLUMNS = 7, 32, 40


@pytest.fixture(scope="module")
def thread_client():
    with Client(processes=False, n_workers=1, threads_per_worker=2, dashboard_address="127.0.0.1:0") as c:
        yield c


def shuffled_series(orientation=OBLIQUE, slices=SLICES):
    series = make_ct_series(slices, ROWS, COLUMNS, orientation=orientation)
    random.Random(7).shuffle(series)
    return series


def enhanced_image(frames: int, rows: int, columns: int) -> hd.legacy.LegacyConvertedEnhancedCTImage:
    """One multi-frame CT image, its frames out of slice order, without pixel data."""
    slices = make_ct_series(frames, rows, columns, orientation=OBLIQUE, pixel_data=True)
    random.Random(2).shuffle(slices)  # the frames of the enhanced image in this order
    enhanced = hd.legacy.LegacyConvertedEnhancedCTImage(
        slices, series_instance_uid=hd.UID(), series_number=2, sop_instance_uid=hd.UID(),
        instance_number=1,
    )
    del enhanced.PixelData  # daskseg reads headers only; highdicom needs none either
    return enhanced


def volume_mask(segmentation_type: str, n_segments: int = 3, seed: int = 0) -> np.ndarray:
    """Labels (or planes) with empty slices, and segments absent from some slices."""
    rng = np.random.default_rng(seed)
    labels = np.zeros((SLICES, ROWS, COLUMNS), np.uint8)
    labels[1:5, 4:25, 6:33] = rng.integers(0, n_segments + 1, size=(4, 21, 27))
    labels[2] = np.where(labels[2] == 2, 0, labels[2])  # segment 2 absent from slice 2
    if segmentation_type != "FRACTIONAL":
        return labels
    planes = np.stack([labels == n for n in range(1, n_segments + 1)], axis=-1)
    return (planes * rng.uniform(0.2, 1.0, size=planes.shape)).astype(np.float32)


def write_both(tmp_path, client, series, mask, segmentation_type, transfer_syntax,
               ours_mask=None, **options):
    """daskseg's SEG (of ``ours_mask``, the same values in another form, if given) and
    highdicom's of ``mask``."""
    descriptions = make_segment_descriptions(
        mask.shape[3] if mask.ndim == 4 else 3, segmentation_type=segmentation_type
    )
    uids = dict(series_instance_uid=hd.UID(), sop_instance_uid=hd.UID())
    path = write_segmentation(
        mask if ours_mask is None else ours_mask, series, descriptions, tmp_path / "ours.dcm",
        segmentation_type=segmentation_type, transfer_syntax_uid=transfer_syntax, client=client,
        **uids, **HD_OPTIONS, **options,
    )
    # highdicom 0.28 does not write HTJ2K: its JPEG 2000 SEG, the meta header labelled as ours.
    htj2k = transfer_syntax == pydicom.uid.HTJ2KLossless
    theirs = hd.seg.Segmentation(
        [series] if isinstance(series, pydicom.Dataset) else series, mask.copy(),
        segmentation_type, descriptions,
        transfer_syntax_uid=pydicom.uid.JPEG2000Lossless if htj2k else transfer_syntax,
        **uids, **HD_OPTIONS, **options,
    )
    theirs.file_meta.TransferSyntaxUID = transfer_syntax
    return pydicom.dcmread(path), theirs


def assert_same_seg(ours: pydicom.Dataset, theirs: hd.seg.Segmentation, series, tmp_path,
                    multiframe=False):
    assert int(ours.NumberOfFrames) == int(theirs.NumberOfFrames)
    # Both as read from their files (an empty value is None in memory, '' once read).
    theirs.save_as(tmp_path / "theirs.dcm")
    saved = pydicom.dcmread(tmp_path / "theirs.dcm")
    assert dataset_differences(ours, saved) == []
    assert dataset_differences(ours.file_meta, saved.file_meta) == []
    ours_seg = hd.seg.Segmentation.from_dataset(ours)
    theirs_seg = hd.seg.Segmentation.from_dataset(theirs)
    for index in range(1, int(ours.NumberOfFrames) + 1):
        np.testing.assert_array_equal(ours_seg.get_stored_frame(index), theirs_seg.get_stored_frame(index))
    combine = ours.SegmentationType != "FRACTIONAL"
    if multiframe:
        frames = list(range(1, int(series[0].NumberOfFrames) + 1))
        np.testing.assert_array_equal(
            ours_seg.get_pixels_by_source_frame(series[0].SOPInstanceUID, frames,
                                                combine_segments=combine,
                                                assert_missing_frames_are_empty=True),
            theirs_seg.get_pixels_by_source_frame(series[0].SOPInstanceUID, frames,
                                                  combine_segments=combine,
                                                  assert_missing_frames_are_empty=True),
        )
        return
    uids = [ds.SOPInstanceUID for ds in series]
    np.testing.assert_array_equal(
        ours_seg.get_pixels_by_source_instance(uids, combine_segments=combine),
        theirs_seg.get_pixels_by_source_instance(uids, combine_segments=combine),
    )


@pytest.mark.parametrize("omit_empty_frames", [True, False])
@pytest.mark.parametrize(("segmentation_type", "transfer_syntax"), MATRIX)
def test_matches_highdicom(tmp_path, thread_client, segmentation_type, transfer_syntax,
                           omit_empty_frames):
    series = shuffled_series()
    mask = volume_mask(segmentation_type)
    ours, theirs = write_both(tmp_path, thread_client, series, mask, segmentation_type,
                              transfer_syntax, omit_empty_frames=omit_empty_frames)
    assert_same_seg(ours, theirs, series, tmp_path)


@pytest.mark.parametrize("order", ["along the normal", "against it", "shuffled"])
def test_a_zarr_label_volume_matches_highdicom(tmp_path, thread_client, order, monkeypatch):
    """A Zarr mask of a series stored in slice order (or its reverse) is read in the writer's
    blocks directly, one task a block; one of a shuffled series is reordered and rechunked:
    each as highdicom writes it."""
    import zarr

    import daskseg._volume

    series = {"along the normal": make_ct_series(SLICES, ROWS, COLUMNS)[::-1],
              "against it": make_ct_series(SLICES, ROWS, COLUMNS),
              "shuffled": shuffled_series()}[order]
    labels = volume_mask("LABELMAP")
    path = tmp_path / "labels.zarr"
    zarr.create_array(str(path), shape=labels.shape, chunks=(2, 16, 16),
                      dtype=labels.dtype)[:] = labels
    graphs = []

    def in_blocks(*args):
        blocks = read_in_blocks(*args)
        graphs.append(len(dict(blocks.__dask_graph__())))
        return blocks

    read_in_blocks = daskseg._volume.in_blocks
    monkeypatch.setattr(daskseg._volume, "in_blocks", in_blocks)
    for kind in ("BINARY", "LABELMAP"):
        uids = dict(series_instance_uid=hd.UID(), sop_instance_uid=hd.UID())
        ours = write_segmentation(str(path), series, make_segment_descriptions(
            3, segmentation_type=kind), tmp_path / f"{kind}.dcm", segmentation_type=kind,
            client=thread_client, **uids, **HD_OPTIONS)
        theirs = hd.seg.Segmentation(series, labels.copy(), kind, make_segment_descriptions(
            3, segmentation_type=kind), **uids, **HD_OPTIONS)
        assert_same_seg(pydicom.dcmread(ours), theirs, series, tmp_path)
    # One task a block and the array itself (of 7 slices: at most 7 blocks), never a task a
    # Zarr chunk (24 here) and others joining them.
    assert graphs == ([] if order == "shuffled" else [graphs[0]] * 2) and all(
        size <= SLICES + 1 for size in graphs), graphs


def test_labelmap_segment_numbers_may_skip_as_in_highdicom(tmp_path, thread_client):
    series = shuffled_series()
    numbers = (4, 17, 117)  # three of TotalSegmentator's structures, their own label values
    labels = np.asarray((0, *numbers), np.uint8)[volume_mask("LABELMAP")]
    descriptions = make_segment_descriptions(3, segmentation_type="LABELMAP")
    for description, number in zip(descriptions, numbers):
        description.SegmentNumber = number
    uids = dict(series_instance_uid=hd.UID(), sop_instance_uid=hd.UID())
    ours = write_segmentation(labels, series, descriptions, tmp_path / "ours.dcm",
                              segmentation_type="LABELMAP", client=thread_client,
                              **uids, **HD_OPTIONS)
    theirs = hd.seg.Segmentation(series, labels.copy(), "LABELMAP", descriptions,
                                 **uids, **HD_OPTIONS)
    assert_same_seg(pydicom.dcmread(ours), theirs, series, tmp_path)


@pytest.mark.parametrize("segmentation_type", ["FRACTIONAL", "BINARY"])
def test_a_floating_point_volume_is_one_segment_as_in_highdicom(tmp_path, thread_client,
                                                                segmentation_type):
    series = shuffled_series()
    fractions = volume_mask("FRACTIONAL")[..., 0]  # (frames, rows, columns), no segment axis
    mask = fractions if segmentation_type == "FRACTIONAL" else (fractions > 0).astype(np.float32)
    descriptions = make_segment_descriptions(1, segmentation_type=segmentation_type)
    uids = dict(series_instance_uid=hd.UID(), sop_instance_uid=hd.UID())
    ours = write_segmentation(mask, series, descriptions, tmp_path / "ours.dcm",
                              segmentation_type=segmentation_type, client=thread_client,
                              **uids, **HD_OPTIONS)
    theirs = hd.seg.Segmentation(series, mask.copy(), segmentation_type, descriptions,
                                 **uids, **HD_OPTIONS)
    assert_same_seg(pydicom.dcmread(ours), theirs, series, tmp_path)


@pytest.mark.parametrize(
    ("segmentation_type", "mask"),
    [
        ("BINARY", np.zeros((SLICES, ROWS, COLUMNS), np.uint8)),  # all empty: every frame kept
        ("BINARY", np.ones((SLICES, ROWS, COLUMNS, 1), bool)),  # one segment: organized "3D"
        ("LABELMAP", np.pad(np.ones((SLICES - 3, ROWS, COLUMNS), np.uint16) * 2, ((1, 2), (0, 0), (0, 0)))),
    ],
)
def test_dimension_organization_and_empty_masks_match_highdicom(
    tmp_path, thread_client, segmentation_type, mask
):
    series = make_ct_series(SLICES, ROWS, COLUMNS)  # axial, regular: a 3D volume
    ours, theirs = write_both(tmp_path, thread_client, series, mask, segmentation_type,
                              pydicom.uid.ExplicitVRLittleEndian)
    assert_same_seg(ours, theirs, series, tmp_path)


def test_fractions_that_all_store_as_zero_keep_every_frame(tmp_path, thread_client):
    """As an all-empty mask: no frame would be left, and a SEG needs one (highdicom fails)."""
    faint = np.zeros((SLICES, ROWS, COLUMNS, 2), np.float32)
    faint[1, :5, :5, 0] = faint[3, 10:, 10:, 1] = 0.001
    path = write_segmentation(faint, make_ct_series(SLICES, ROWS, COLUMNS),
                              make_segment_descriptions(2), tmp_path / "seg.dcm",
                              segmentation_type="FRACTIONAL", client=thread_client)
    ds = pydicom.dcmread(path)
    assert int(ds.NumberOfFrames) == len(ds.PerFrameFunctionalGroupsSequence) == 2 * SLICES
    assert not read_segmentation(path).compute().any()


def test_multiframe_source_without_slice_spacing_is_left_alone_and_spacing_derived(
    tmp_path, thread_client
):
    """highdicom writes SpacingBetweenSlices 1.0 into the proxy's functional groups (of one
    plane): shared with the caller's image, that changed it and passed for its own spacing."""
    enhanced = enhanced_image(SLICES, ROWS, COLUMNS)
    measures = enhanced.SharedFunctionalGroupsSequence[0].PixelMeasuresSequence[0]
    if "SpacingBetweenSlices" in measures:
        del measures.SpacingBetweenSlices
    given = copy.deepcopy(enhanced)
    mask = volume_mask("BINARY")
    path = write_segmentation(mask, enhanced, make_segment_descriptions(3), tmp_path / "seg.dcm",
                              client=thread_client)
    assert enhanced == given
    theirs = hd.seg.Segmentation([given], mask, "BINARY", make_segment_descriptions(3),
                                 series_instance_uid=hd.UID(), sop_instance_uid=hd.UID(),
                                 **HD_OPTIONS)
    spacing = [ds.SharedFunctionalGroupsSequence[0].PixelMeasuresSequence[0].SpacingBetweenSlices
               for ds in (pydicom.dcmread(path), theirs)]
    assert spacing[0] == spacing[1] == pytest.approx(2.5)


def test_a_one_frame_image_with_its_position_in_the_shared_groups_is_written(
    tmp_path, thread_client
):
    """A one-frame image may keep its plane position in the shared functional groups (PS3.3
    C.7.6.16), as highdicom's legacy conversion of one slice does; the SEG's frame takes it
    from there (highdicom's Segmentation of it fails with an AttributeError)."""
    [slice_] = make_ct_series(1, ROWS, COLUMNS, orientation=OBLIQUE, pixel_data=True)
    enhanced = hd.legacy.LegacyConvertedEnhancedCTImage(
        [slice_], series_instance_uid=hd.UID(), series_number=2, sop_instance_uid=hd.UID(),
        instance_number=1,
    )
    [item] = enhanced.PerFrameFunctionalGroupsSequence
    assert "PlanePositionSequence" not in item
    assert "PlanePositionSequence" in enhanced.SharedFunctionalGroupsSequence[0]
    mask = volume_mask("BINARY")[2:3]
    assert mask.any()
    path = write_segmentation(mask, enhanced, make_segment_descriptions(3), tmp_path / "seg.dcm",
                              client=thread_client)
    seg = pydicom.dcmread(path)
    positions = {tuple(item.PlanePositionSequence[0].ImagePositionPatient)
                 for item in seg.PerFrameFunctionalGroupsSequence}
    assert positions == {tuple(slice_.ImagePositionPatient)}
    assert all(item.DerivationImageSequence[0].SourceImageSequence[0].ReferencedFrameNumber == 1
               for item in seg.PerFrameFunctionalGroupsSequence)
    np.testing.assert_array_equal(read_segmentation(path, combine_segments=True).compute(), mask)


def test_multiframe_source_and_copied_slice_spacing_match_highdicom(tmp_path, thread_client):
    enhanced = enhanced_image(SLICES, ROWS, COLUMNS)
    mask = volume_mask("BINARY")
    ours, theirs = write_both(tmp_path, thread_client, enhanced, mask, "BINARY",
                              pydicom.uid.ExplicitVRLittleEndian)
    assert_same_seg(ours, theirs, [enhanced], tmp_path, multiframe=True)

    series = shuffled_series()
    for ds in series:
        ds.SpacingBetweenSlices = "2.4"  # highdicom copies it rather than deriving 2.5
    folder = tmp_path / "spacing"
    folder.mkdir()
    ours, theirs = write_both(folder, thread_client, series, mask, "BINARY",
                              pydicom.uid.ExplicitVRLittleEndian)
    assert_same_seg(ours, theirs, series, folder)


def test_nifti_mask_and_series_folder_on_a_process_cluster(tmp_path, dask_client):
    nibabel = pytest.importorskip("nibabel")
    series = shuffled_series()
    folder = tmp_path / "ct"
    folder.mkdir()
    for ds in series:
        ds.save_as(folder / f"{ds.SOPInstanceUID}.dcm", enforce_file_format=True)
    labels = volume_mask("BINARY")  # frame k for series[k]
    # The NIfTI file holds the labels in (column, row, slice) order of the sorted volume, RAS+.
    order = hd.spatial.get_dataset_sort_index(series)
    geometry = hd.VolumeGeometry.from_attributes(
        image_position=series[order[0]].ImagePositionPatient, image_orientation=OBLIQUE,
        rows=ROWS, columns=COLUMNS, pixel_spacing=series[0].PixelSpacing,
        spacing_between_slices=2.5, number_of_frames=SLICES, coordinate_system="PATIENT",
    )
    affine = np.diag([-1.0, -1.0, 1.0, 1.0]) @ geometry.affine[:, [2, 1, 0, 3]]
    nifti = tmp_path / "labels.nii"  # uncompressed: read lazily, slab by slab, on the workers
    nibabel.Nifti1Image(labels[order].transpose(2, 1, 0).copy(), affine).to_filename(nifti)

    path = write_segmentation(nifti, folder, make_segment_descriptions(3), tmp_path / "seg.dcm",
                              client=dask_client)
    seg = hd.seg.segread(path)
    uids = [ds.SOPInstanceUID for ds in series]
    np.testing.assert_array_equal(
        seg.get_pixels_by_source_instance(uids, combine_segments=True), labels
    )


def test_a_mask_without_geometry_follows_a_folders_slice_order_not_its_file_names(
    tmp_path, thread_client
):
    """Files named 1.dcm .. 12.dcm sort as text 1, 10, 11, 12, 2...: a folder's images are taken
    in highdicom's slice order (the order read_segmentation gives back), never by name."""
    series = make_ct_series(12, ROWS, COLUMNS, pixel_data=True)
    folder = tmp_path / "ct"
    folder.mkdir()
    for k, ds in enumerate(series):
        ds.save_as(folder / f"{k + 1}.dcm", enforce_file_format=True)
    in_slice_order = hd.spatial.sort_datasets(series)
    labels = np.zeros((12, ROWS, COLUMNS), np.uint8)
    for k in range(12):
        labels[k, k, :] = 1 + k % 3  # frame k marks row k of the k-th image in slice order
    path = write_segmentation(labels, folder, make_segment_descriptions(3), tmp_path / "seg.dcm",
                              client=thread_client)
    uids = [ds.SOPInstanceUID for ds in in_slice_order]
    np.testing.assert_array_equal(
        hd.seg.segread(path).get_pixels_by_source_instance(uids, combine_segments=True), labels
    )


@pytest.mark.skipif(shutil.which("dciodvfy") is None, reason="dciodvfy (Debian dicom3tools) absent")
@pytest.mark.parametrize("segmentation_type", ["BINARY", "FRACTIONAL", "LABELMAP"])
def test_dciodvfy_reports_no_real_error(tmp_path, thread_client, segmentation_type):
    series = shuffled_series()
    path = write_segmentation(
        volume_mask(segmentation_type), series,
        make_segment_descriptions(3, segmentation_type=segmentation_type), tmp_path / "seg.dcm",
        segmentation_type=segmentation_type, client=thread_client,
    )
    assert dciodvfy_errors(path, segmentation_type, "") == []


def _with_label(labels, frame, label):
    labels = labels.copy()
    labels[frame, 5, 6] = label
    return labels


def _without(dataset, keyword):
    changed = copy.deepcopy(dataset)
    delattr(changed, keyword)
    return changed


def test_refusals_leave_nothing_behind(tmp_path, thread_client):
    series = shuffled_series()
    descriptions = make_segment_descriptions(3)
    mask = volume_mask("BINARY")
    enhanced = hd.legacy.LegacyConvertedEnhancedCTImage(
        make_ct_series(3, 8, 8, pixel_data=True), series_instance_uid=hd.UID(), series_number=2,
        sop_instance_uid=hd.UID(), instance_number=1,
    )
    cases = [
        (dict(mask=mask[:2], source=enhanced), "the source has 3 frames of 8 x 8"),
        (dict(mask=mask[1:], source=series), "expected labels (7, 32, 40)"),
        (dict(mask=mask, source=series, dimension_organization_type="TILED_FULL"),
         "is for tiled images"),
        (dict(mask=mask, source=series, plane_positions=[]), "cannot be given for a SEG of a series"),
        (dict(mask=mask, source=series, tile_size=16), "tile_size is for tiled images"),
        (dict(mask=mask, source=series, tile_pixel_array=True), "a series' mask as its frames"),
        (dict(mask=mask, source=series, further_source_images=series[:1]),
         "further_source_images is not supported"),
        (dict(mask=mask, source=series, dimension_organization_type="3D"),
         "not a regularly spaced volume"),
        # a value check of a block task names the mask frame as given, not the block's rows
        (dict(mask=_with_label(volume_mask("LABELMAP"), 3, 7), source=series),
         f"label 7 in mask frame 3 (of source image {series[3].SOPInstanceUID}) at row 5, "
         "column 6"),
        # highdicom reads SliceThickness without checking it is there (an AttributeError)
        (dict(mask=mask, source=[_without(ds, "SliceThickness") for ds in series]),
         "no attribute 'SliceThickness'"),
        (dict(mask=mask, source=series, header_attributes={"PatientID": "someone else"}),
         "the SEG's PatientID is"),
        # the writer sets it after the last block, from the planes written
        (dict(mask=mask, source=series,
              header_attributes={"DimensionOrganizationType": "TILED_FULL"}),
         "use the dimension_organization_type option"),
    ]
    for arguments, message in cases:
        mask_, source = arguments.pop("mask"), arguments.pop("source")
        with pytest.raises(SegmentationInputError) as info:
            write_segmentation(mask_, source, descriptions, tmp_path / "seg.dcm",
                               client=thread_client, **arguments)
        assert message in str(info.value)
    assert list(tmp_path.iterdir()) == []


def test_header_attributes_and_series_description_of_a_volume_seg(tmp_path, thread_client):
    series = shuffled_series()
    path = write_segmentation(volume_mask("LABELMAP"), series, make_segment_descriptions(3),
                              tmp_path / "seg.dcm", segmentation_type="LABELMAP",
                              client=thread_client, series_description="Organs, Zürich",
                              header_attributes={"BodyPartExamined": "ABDOMEN",
                                                 "PatientID": series[0].PatientID})
    written = pydicom.dcmread(path)
    assert (written.BodyPartExamined, written.SeriesDescription) == ("ABDOMEN", "Organs, Zürich")
    assert written.SpecificCharacterSet == "ISO_IR 192"
    assert len(written.SourceImageSequence) == len(series)


@pytest.mark.parametrize("order", [[0, 1, 2, 3, 4, 5, 6], [6, 5, 4, 3, 2, 1, 0], [3, 1, 0, 6, 5, 2, 4]])
def test_tasks_of_a_numpy_mask_take_frames_in_the_sorted_order(order):
    import dask

    from daskseg._volume import _encode_tasks
    from daskseg.plan import FrameSpec

    mask = np.arange(7 * 3 * 2, dtype=np.uint8).reshape(7, 3, 2)
    spec = FrameSpec("LABELMAP", 64, False, 3, 2, "1.2.840.10008.1.2.1", 8, 255, False)
    tasks = _encode_tasks(mask, np.array(order), 3, spec)
    assert [n for n, _ in tasks] == [3, 3, 1]
    planes = np.zeros_like(mask)
    for _, task in tasks:
        # Each task carries only its own slices, not the mask.
        assert task.data.size <= 3 * 3 * 2
        result = dask.compute(task.make(task.data), scheduler="synchronous")[0][0, 0]
        frames = result.data.reshape(-1, 3, 2)
        planes[result.positions[:, 1]] = frames
    np.testing.assert_array_equal(planes, mask[order])


def test_blocks_of_a_series_follow_the_cluster_threads_within_the_byte_bound():
    from daskseg._series import load_source_series
    from daskseg._volume import _BLOCK_BYTES, _slices_per_block
    from daskseg.plan import FrameSpec

    series = load_source_series(make_ct_series(300, 512, 512))
    labelmap = FrameSpec("LABELMAP", 117, False, 512, 512, "1.2.840.10008.1.2.4.90", 8, 255, True)
    assert _slices_per_block(series, labelmap, False, 1, 2) == 50  # 3 blocks a thread: 6
    assert _slices_per_block(series, labelmap, False, 1, 8) == 13  # 24 blocks
    assert _slices_per_block(series, labelmap, False, 1, None) == 19  # unknown: 16 blocks
    assert _slices_per_block(series, labelmap, False, 1, 0) == 19  # no worker yet: the same
    # 117 bit-packed BINARY frames a slice: the bytes bound the block, whatever the threads.
    binary = FrameSpec("BINARY", 117, False, 512, 512, "1.2.840.10008.1.2.1", 1, 255, True)
    per_slice = 512 * 512 // 8 * 117
    assert _slices_per_block(series, binary, False, 1, 2) == _BLOCK_BYTES // per_slice == 8


def test_a_write_makes_three_block_tasks_for_each_worker_thread(tmp_path, dask_client):
    from distributed import get_task_stream

    series = make_ct_series(30, ROWS, COLUMNS)
    labels = np.zeros((30, ROWS, COLUMNS), np.uint8)
    labels[3:27, 5:20, 5:30] = 2
    labels[10:20, 8:12, 8:12] = 1
    with get_task_stream(dask_client) as stream:
        path = write_segmentation(labels, series, make_segment_descriptions(2),
                                  tmp_path / "seg.dcm", segmentation_type="LABELMAP",
                                  client=dask_client)
    encodes = [task for task in stream.data if str(task["key"]).startswith("encode-frames")]
    assert len(encodes) == 3 * sum(dask_client.nthreads().values())  # 6 blocks of 5 slices
    seg = hd.seg.segread(path)
    source_uids = [image.SOPInstanceUID for image in series]
    read = seg.get_pixels_by_source_instance(source_uids, combine_segments=True,
                                             skip_overlap_checks=True)
    np.testing.assert_array_equal(read, labels)


def test_a_header_highdicom_refuses_stops_a_volume_write_and_leaves_nothing(tmp_path, dask_client):
    """The volume's header is built while its blocks encode: highdicom's refusal still ends
    the write with SegmentationInputError, and nothing is left (no spool of any worker)."""
    with pytest.raises(SegmentationInputError, match="series_number"):
        write_segmentation(volume_mask("BINARY"), shuffled_series(), make_segment_descriptions(3),
                           tmp_path / "seg.dcm", client=dask_client, series_number=-3)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("segmentation_type, transfer_syntax", [
    ("BINARY", pydicom.uid.ExplicitVRLittleEndian), ("BINARY", pydicom.uid.JPEG2000Lossless),
    ("FRACTIONAL", pydicom.uid.ImplicitVRLittleEndian),
])
def test_label_values_of_a_series(tmp_path, thread_client, segmentation_type, transfer_syntax):
    """A label volume whose values are not 1..n (TotalSegmentator's 117 labels, written as a
    few segments): the SEG equals highdicom's of the volume renumbered."""
    series = shuffled_series()
    labels = volume_mask("BINARY")
    values = [7, 117, 40]  # segment k is value values[k - 1]
    with_values = np.select([labels == k for k in (1, 2, 3)], values, 0).astype(np.uint8)
    descriptions = make_segment_descriptions(3, segmentation_type=segmentation_type)
    uids = dict(series_instance_uid=hd.UID(), sop_instance_uid=hd.UID())
    path = write_segmentation(with_values, series, descriptions, tmp_path / "ours.dcm",
                              segmentation_type=segmentation_type, label_values=values,
                              transfer_syntax_uid=transfer_syntax, client=thread_client,
                              **uids, **HD_OPTIONS)
    theirs = hd.seg.Segmentation(series, labels.copy(), segmentation_type, descriptions,
                                 transfer_syntax_uid=transfer_syntax, **uids, **HD_OPTIONS)
    assert_same_seg(pydicom.dcmread(path), theirs, series, tmp_path)


def test_a_source_uid_pydicom_calls_invalid_is_referenced_as_highdicom_does(tmp_path,
                                                                          thread_client):
    # Valid UIDs are referenced without pydicom's check of each (it was checked once); one
    # that fails it takes pydicom's way, with its warning, as in highdicom.
    series = shuffled_series()
    with pytest.warns(UserWarning, match="Invalid value for VR UI"):
        series[3].SOPInstanceUID = "1.2.03.4"  # a component with a leading zero (PS3.5 9.1)
    mask = volume_mask("BINARY")
    with pytest.warns(UserWarning, match="Invalid value for VR UI: '1.2.03.4'"):
        write_segmentation(mask, series, make_segment_descriptions(3), tmp_path / "alone.dcm",
                           client=thread_client)
    with pytest.warns(UserWarning, match="Invalid value for VR UI: '1.2.03.4'"):
        ours, theirs = write_both(tmp_path, thread_client, series, mask, "BINARY",
                                  pydicom.uid.ExplicitVRLittleEndian)
    assert "1.2.03.4" in [item.ReferencedSOPInstanceUID for item in ours.SourceImageSequence]
    assert_same_seg(ours, theirs, series, tmp_path)


def test_an_empty_bool_labelmap_of_a_segment_numbered_2_is_written_as_highdicom_writes_it(
    tmp_path, thread_client
):
    # A boolean mask's True is label 1; an empty one describing segment 2 alone is taken by
    # highdicom, and its header was refused here ("segments that lack descriptions").
    series = shuffled_series()
    segmentation_type = "LABELMAP"  # others number their segments 1..n
    descriptions = make_segment_descriptions(2, segmentation_type=segmentation_type)[1:]
    mask = np.zeros((SLICES, ROWS, COLUMNS), bool)
    uids = dict(series_instance_uid=hd.UID(), sop_instance_uid=hd.UID())
    path = write_segmentation(mask, series, descriptions, tmp_path / "ours.dcm",
                              segmentation_type=segmentation_type, client=thread_client,
                              **uids, **HD_OPTIONS)
    theirs = hd.seg.Segmentation(series, mask, segmentation_type, descriptions, **uids,
                                 **HD_OPTIONS)
    assert_same_seg(pydicom.dcmread(path), theirs, series, tmp_path)
