"""Reading SEGs of series: values equal highdicom's get_pixels_by_source_instance."""

from __future__ import annotations

import functools
import importlib.util
import os
import random
import stat
import warnings

import highdicom as hd
import numpy as np
import pydicom
import pytest
import zarr
from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian, JPEG2000Lossless
from test_volume_write import enhanced_image, shuffled_series, volume_mask

from daskseg import (
    DestinationExistsError,
    SegmentationInputError,
    SegmentationTypeError,
    VolumeSegmentationReader,
    open_segmentation,
    read_segmentation,
    write_segmentation,
)
from daskseg._series import load_source_series
from daskseg.synthetic import make_ct_series, make_segment_descriptions, make_slide

READS = [
    dict(),
    dict(combine_segments=True),
    dict(segment_numbers=[3, 1]),
    dict(segment_numbers=[3, 1], combine_segments=True, relabel=True),
    dict(dtype=np.uint16),
]


def same_as_highdicom(path, uids, **options):
    ours = read_segmentation(path, source_sop_instance_uids=uids, **options).compute()
    theirs = hd.seg.segread(path).get_pixels_by_source_instance(
        uids, assert_missing_frames_are_empty=True, **options
    )
    assert ours.dtype == theirs.dtype and ours.shape == theirs.shape
    np.testing.assert_array_equal(ours, theirs)
    return ours


@pytest.mark.parametrize("writer", ["daskseg", "highdicom"])
@pytest.mark.parametrize("segmentation_type, syntax", [
    ("BINARY", ExplicitVRLittleEndian),
    ("BINARY", JPEG2000Lossless),
    ("FRACTIONAL", ImplicitVRLittleEndian),
    ("LABELMAP", ExplicitVRLittleEndian),
])
def test_matches_highdicom(tmp_path, thread_client, writer, segmentation_type, syntax):
    series = shuffled_series()
    mask = volume_mask(segmentation_type)
    descriptions = make_segment_descriptions(3, segmentation_type=segmentation_type)
    path = tmp_path / "seg.dcm"
    if writer == "daskseg":
        write_segmentation(mask, series, descriptions, path, segmentation_type=segmentation_type,
                           transfer_syntax_uid=syntax, client=thread_client)
    else:  # highdicom's own file (its sequence lengths and element order)
        hd.seg.Segmentation(series, mask, segmentation_type, descriptions, hd.UID(), 1, hd.UID(),
                            1, "x", "x", "1", "x", transfer_syntax_uid=syntax).save_as(path)
    reader = open_segmentation(path)
    assert isinstance(reader, VolumeSegmentationReader)
    # By default: the planes with frames (slices 1..4 of the mask), sorted along the normal.
    order = hd.spatial.get_dataset_sort_index(series)
    with_frames = [series[k].SOPInstanceUID for k in order if mask[k].any()]
    assert reader.source_sop_instance_uids == with_frames
    for options in READS[:2] if segmentation_type == "FRACTIONAL" else READS:
        if segmentation_type == "FRACTIONAL" and options.get("combine_segments"):
            continue
        default = read_segmentation(path, **options).compute()
        np.testing.assert_array_equal(default, same_as_highdicom(path, with_frames, **options))
    # Every source image in the order given: omitted planes read as zeros.
    given = [ds.SOPInstanceUID for ds in series]
    values = same_as_highdicom(path, given, combine_segments=segmentation_type != "FRACTIONAL")
    if segmentation_type != "FRACTIONAL":
        np.testing.assert_array_equal(values, mask)


def test_subset_reordered_and_chunks(tmp_path, thread_client):
    series = shuffled_series()
    mask = volume_mask("BINARY")
    path = write_segmentation(mask, series, make_segment_descriptions(3), tmp_path / "seg.dcm",
                              client=thread_client)
    uids = [ds.SOPInstanceUID for ds in series]
    chosen = [uids[4], uids[0], uids[2], uids[4]]  # an empty plane, a repeat
    values = same_as_highdicom(path, chosen, combine_segments=True)
    np.testing.assert_array_equal(values, mask[[4, 0, 2, 4]])
    lazy = read_segmentation(path, source_sop_instance_uids=uids, chunks=2)
    assert lazy.chunks[0] == (2, 2, 2, 1)
    np.testing.assert_array_equal(lazy[3:5, ..., 1].compute(), mask[3:5] == 2)
    # Any iterable, as highdicom takes: a numpy array (a pandas column's values), a generator.
    for given in (np.array(chosen, dtype=object), (uid for uid in chosen)):
        np.testing.assert_array_equal(
            read_segmentation(path, source_sop_instance_uids=given, combine_segments=True),
            mask[[4, 0, 2, 4]])
    with pytest.raises(SegmentationTypeError):
        read_segmentation(path, source_sop_instance_uids=7)
    for chunks in (0, -1, 2.5, (2, 2)):
        with pytest.raises(SegmentationInputError, match="number of planes per chunk"):
            read_segmentation(path, chunks=chunks)


def test_to_numpy_equals_highdicom(tmp_path, dask_client):
    series = shuffled_series()
    mask = volume_mask("BINARY")
    path = write_segmentation(mask, series, make_segment_descriptions(3), tmp_path / "seg.dcm",
                              client=dask_client)
    uids = [ds.SOPInstanceUID for ds in series][::-1]
    reader = open_segmentation(path)
    for options in [{"combine_segments": True}, {"segment_numbers": [3, 1]}]:
        got = reader.to_numpy(source_sop_instance_uids=uids, chunks=2, client=dask_client,
                              **options)
        theirs = same_as_highdicom(path, uids, **options)  # highdicom's values, checked there
        assert isinstance(got, np.ndarray) and got.dtype == theirs.dtype
        np.testing.assert_array_equal(got, theirs)


def test_shared_testdata(testdata):
    paths = sorted(testdata.glob("seg_image_ct_*.dcm"))
    if not paths:
        pytest.skip("no seg_image_ct_*.dcm in the shared testdata")
    for path in paths:
        reader = open_segmentation(path)
        ours = reader.to_dask().compute()
        # highdicom's test SEGs do not say their spatial locations are preserved.
        theirs = hd.seg.segread(path).get_pixels_by_source_instance(
            reader.source_sop_instance_uids, ignore_spatial_locations=True
        )
        np.testing.assert_array_equal(ours, theirs)


def test_refusals(tmp_path, thread_client, testdata):
    series = shuffled_series(slices=7)
    path = write_segmentation(volume_mask("BINARY"), series, make_segment_descriptions(3),
                              tmp_path / "seg.dcm", client=thread_client)
    with pytest.raises(SegmentationInputError, match="None of source_sop_instance_uids"):
        read_segmentation(path, source_sop_instance_uids=[hd.UID(), hd.UID()])
    # One unknown among the SEG's own: zeros, as highdicom's with assert_missing_frames_are_empty.
    values = read_segmentation(path, source_sop_instance_uids=[hd.UID(), series[2].SOPInstanceUID],
                               combine_segments=True).compute()
    assert not values[0].any() and values[1].any()
    with pytest.raises(SegmentationInputError, match="sequence of UIDs"):
        read_segmentation(path, source_sop_instance_uids=series[0].SOPInstanceUID)
    with pytest.raises(SegmentationInputError, match="not in this SEG"):
        read_segmentation(path, segment_numbers=[4])
    tiled = testdata / "seg_image_sm_control.dcm"
    if tiled.exists():
        with pytest.raises(SegmentationInputError, match="tiled image"):
            read_segmentation(tiled, source_sop_instance_uids=[hd.UID()])
    # A transfer syntax the volume reader does not take is named as such.
    deflated = pydicom.dcmread(path)
    deflated.file_meta.TransferSyntaxUID = pydicom.uid.DeflatedExplicitVRLittleEndian
    deflated.save_as(tmp_path / "deflated.dcm")
    with pytest.raises(SegmentationInputError, match="Deflated Explicit VR Little Endian"):
        open_segmentation(tmp_path / "deflated.dcm")


def _edited(path, tmp_path, name, edit):
    dataset = pydicom.dcmread(path)
    edit(dataset)
    damaged = tmp_path / f"{name}.dcm"
    dataset.save_as(damaged)
    return damaged


def test_a_damaged_header_is_a_file_error_naming_the_file(tmp_path, thread_client):
    """The volume reader raised AttributeError, IndexError or numpy's ValueError from deep
    inside (and the CLI a traceback), read SegmentationType 'FOO' as BINARY, and a LABELMAP
    describing segment 300 in 8-bit pixels failed in the tasks with an IndexError."""
    from daskseg import SegmentationFileError

    series = shuffled_series(slices=7)
    binary = write_segmentation(volume_mask("BINARY"), series, make_segment_descriptions(3),
                                tmp_path / "binary.dcm", client=thread_client)
    fractional = write_segmentation(
        volume_mask("FRACTIONAL"), series,
        make_segment_descriptions(3, segmentation_type="FRACTIONAL"), tmp_path / "fraction.dcm",
        segmentation_type="FRACTIONAL", client=thread_client,
    )
    labelmap = write_segmentation(
        volume_mask("LABELMAP"), series, make_segment_descriptions(3, segmentation_type="LABELMAP"),
        tmp_path / "labelmap.dcm", segmentation_type="LABELMAP", client=thread_client,
    )

    def no_shared(ds):
        del ds.SharedFunctionalGroupsSequence

    def short_position(ds):
        ds.PerFrameFunctionalGroupsSequence[0].PlanePositionSequence[0].ImagePositionPatient = [
            1.0, 2.0]

    def segment_300(ds):
        ds.SegmentSequence[-1].SegmentNumber = 300

    def one_value_positions(ds):
        # Every frame's z alone: three of them were read as one position, the planes folded.
        for item in ds.PerFrameFunctionalGroupsSequence:
            position = item.PlanePositionSequence[0]
            position.ImagePositionPatient = [position.ImagePositionPatient[2]]

    def unlisted_source(ds):
        # Read as one more plane at an occupied position, a slice's segments split over two.
        reference = ds.PerFrameFunctionalGroupsSequence[1].DerivationImageSequence[0]
        uid = str(reference.SourceImageSequence[0].ReferencedSOPInstanceUID)
        reference.SourceImageSequence[0].ReferencedSOPInstanceUID = uid[:-1] + (
            "8" if uid[-1] == "9" else "9")

    cases = [
        (binary, no_shared, "damaged or not a SEG's"),
        (binary, short_position, "ImagePositionPatient has 2 values, not 3"),
        (binary, lambda ds: setattr(ds, "SegmentationType", "FOO"), "SegmentationType 'FOO'"),
        (fractional, lambda ds: delattr(ds, "MaximumFractionalValue"), "MaximumFractionalValue"),
        (labelmap, segment_300, "segment 300, which its 8-bit pixels cannot hold"),
        (binary, one_value_positions, "ImagePositionPatient has 1 values, not 3"),
        (binary, unlisted_source, "does not list among its sources"),
    ]
    for k, (path, edit, says) in enumerate(cases):
        damaged = _edited(path, tmp_path, f"damaged{k}", edit)
        with pytest.raises(SegmentationFileError, match=says) as info:
            read_segmentation(damaged, combine_segments=True).compute(scheduler="synchronous")
        assert damaged.name in str(info.value)


def test_implicit_and_axial_many_segments(tmp_path, thread_client):
    """The raw item walker on implicit VR, frames of one segment in the shared groups."""
    series = shuffled_series(orientation=(1.0, 0.0, 0.0, 0.0, 1.0, 0.0))
    random.Random(3).shuffle(series)
    mask = volume_mask("BINARY") == 1
    path = write_segmentation(mask, series, make_segment_descriptions(1), tmp_path / "one.dcm",
                              transfer_syntax_uid=ImplicitVRLittleEndian, client=thread_client)
    reader = open_segmentation(path)
    same_as_highdicom(path, reader.source_sop_instance_uids)
    same_as_highdicom(path, [ds.SOPInstanceUID for ds in series])


@pytest.mark.parametrize("omit", [False, True])
def test_decode_to_nifti_round_trip(tmp_path, thread_client, omit):
    pytest.importorskip("nibabel")
    from daskseg._nifti import match_to_series, read_nifti
    from daskseg.cli import main

    series = shuffled_series()  # oblique, shuffled
    order = list(hd.spatial.get_dataset_sort_index(series))
    # In slice order, slices 0, 5 and 6 are empty; frame k of the mask is for series[k].
    labels = volume_mask("LABELMAP")[np.argsort(order)]
    path = write_segmentation(labels, series, make_segment_descriptions(3), tmp_path / "seg.dcm",
                              omit_empty_frames=omit, client=thread_client)
    out = tmp_path / "labels.nii.gz"
    assert main(["decode", str(path), "-o", str(out), "--threads", "2", "--quiet"]) == 0
    array, affine = read_nifti(out)
    if omit:  # from the first to the last plane with frames, in slice order, gaps as zeros
        ranks = [rank for rank, k in enumerate(order) if labels[k].any()]
        slab = order[min(ranks) : max(ranks) + 1]
        assert array.shape[2] == len(slab) < len(series)
        np.testing.assert_array_equal(np.asarray(array).transpose(2, 1, 0), labels[slab])
    else:  # the whole series: matched back to it, frame k for series[k]
        matched = match_to_series(array, affine, load_source_series(series))
        np.testing.assert_array_equal(np.asarray(matched), labels)
    # With the series, one slice per image, empty ones too: the round trip is whole.
    folder = tmp_path / "ct"
    folder.mkdir()
    for k, ds in enumerate(series):
        ds.save_as(folder / f"{k}.dcm", enforce_file_format=True)
    whole = tmp_path / "whole.nii.gz"
    assert main(["decode", str(path), "-o", str(whole), "--source", str(folder),
                 "--threads", "2", "--quiet"]) == 0
    array, affine = read_nifti(whole)
    assert array.shape[2] == len(series)
    matched = match_to_series(array, affine, load_source_series(series))
    np.testing.assert_array_equal(np.asarray(matched), labels)
    assert main(["decode", str(path), "-o", str(out), "--quiet"]) == 1  # exists
    # Zarr: the planes as open_segmentation reads them, block by block (the way for a volume
    # larger than memory, which the NIfTI refusal names: it was refused here too); OME-Zarr
    # labels are of a slide's image.
    reader = open_segmentation(path)
    assert main(["decode", str(path), "-o", str(tmp_path / "labels.zarr"), "--threads", "2",
                 "--quiet"]) == 0
    np.testing.assert_array_equal(zarr.open_array(str(tmp_path / "labels.zarr"))[:],
                                  reader.to_numpy())
    assert main(["decode", str(path), "-o", str(tmp_path / "labels.ome.zarr"), "--quiet"]) == 1
    assert not (tmp_path / "labels.ome.zarr").exists()
    uids = reader.source_sop_instance_uids[::-1]
    stored = reader.to_zarr(tmp_path / "reversed.zarr", source_sop_instance_uids=uids,
                            combine_segments=True, chunks=2, client=thread_client)
    assert stored.chunks == (2, *reader.frame_size)
    np.testing.assert_array_equal(
        stored[:], same_as_highdicom(path, uids, combine_segments=True))
    with pytest.raises(DestinationExistsError):
        reader.to_zarr(tmp_path / "reversed.zarr")
    # NumPy: the frames in slice order, as open_segmentation reads them (a SEG of an image
    # without geometry, a Secondary Capture's, had no output the command would write).
    npy = tmp_path / "labels.npy"
    assert main(["decode", str(path), "-o", str(npy), "--combine-segments", "--threads", "2",
                 "--quiet"]) == 0
    np.testing.assert_array_equal(
        np.load(npy), open_segmentation(path).to_numpy(combine_segments=True))
    # Names of other kinds became a Zarr folder (labels.tif) or NIfTI under their name.
    for name in ("labels.tif", "labels"):
        assert main(["decode", str(path), "-o", str(tmp_path / name), "--quiet"]) == 1
        assert not (tmp_path / name).exists()
    with pytest.raises(SegmentationInputError, match="a NIfTI file is named .nii or .nii.gz"):
        open_segmentation(path).to_nifti(tmp_path / "labels.nrrd")
    assert not (tmp_path / "labels.nrrd").exists()


def test_nifti_slices_are_as_far_apart_as_the_series_with_few_planes(tmp_path, thread_client):
    """Planes whose empty neighbours were left out: the NIfTI's slices keep the series'
    spacing, from SpacingBetweenSlices or, without it, SliceThickness (as dcmqi reads it), for
    a lone plane too; and the NIfTI is matched back to the series, as daskseg encode does."""
    pytest.importorskip("nibabel")
    from daskseg._nifti import match_to_series, read_nifti, volume_to_nifti

    series = make_ct_series(14, 16, 24, slice_spacing=2.5)
    order = np.asarray(hd.spatial.get_dataset_sort_index(series))
    for ranks, spacing_given in (([6], True), ([6], False), ([2, 4, 6, 8], False),
                                 ([2, 4, 7], False), ([3, 5], True)):
        labels = np.zeros((len(series), 16, 24), np.uint8)
        for rank in ranks:
            labels[order[rank], 3:9, 5:20] = 1
        path = write_segmentation(labels, series, make_segment_descriptions(1),
                                  tmp_path / "seg.dcm", omit_empty_frames=True,
                                  client=thread_client, overwrite=True)
        if not spacing_given:  # optional (PS3.3 C.7.6.16.2.1); other writers leave it out
            ds = pydicom.dcmread(path)
            del ds.SharedFunctionalGroupsSequence[0].PixelMeasuresSequence[0].SpacingBetweenSlices
            ds.save_as(path)
        out = volume_to_nifti(open_segmentation(path), tmp_path / "labels.nii.gz")
        array, affine = read_nifti(out)
        case = f"planes {ranks}, SpacingBetweenSlices given: {spacing_given}"
        assert np.linalg.norm(affine[:3, 2]) == pytest.approx(2.5), case
        assert array.shape[2] == max(ranks) - min(ranks) + 1, case
        matched = match_to_series(array, affine, load_source_series(series))
        np.testing.assert_array_equal(np.asarray(matched), labels, err_msg=case)


@pytest.mark.skipif(os.name != "posix", reason="POSIX permissions")
def test_written_files_get_the_permissions_open_would_give(tmp_path, thread_client):
    """The SEG and the NIfTI are written under temporary names and renamed into place. They
    end up as a file that open() creates (0o666 less the umask), or keep the permissions of
    the file they replace: never mkstemp's 0o600, which a rename would carry over."""
    pytest.importorskip("nibabel")
    from daskseg._nifti import volume_to_nifti

    series = shuffled_series()
    labels = volume_mask("LABELMAP")[np.argsort(hd.spatial.get_dataset_sort_index(series))]
    previous = os.umask(0o027)
    try:
        (tmp_path / "plain").write_bytes(b"")
        expected = stat.S_IMODE((tmp_path / "plain").stat().st_mode)
        assert expected == 0o640
        seg = write_segmentation(labels, series, make_segment_descriptions(3),
                                 tmp_path / "seg.dcm", client=thread_client)
        nifti = volume_to_nifti(open_segmentation(seg), tmp_path / "labels.nii.gz")
        assert stat.S_IMODE(seg.stat().st_mode) == expected
        assert stat.S_IMODE(nifti.stat().st_mode) == expected
        seg.chmod(0o604)
        write_segmentation(labels, series, make_segment_descriptions(3), seg, overwrite=True,
                           client=thread_client)
        assert stat.S_IMODE(seg.stat().st_mode) == 0o604
    finally:
        os.umask(previous)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["labels.nii.gz", "plain", "seg.dcm"]


def test_fractional_to_nifti_has_a_segment_axis(tmp_path, testdata):
    nibabel = pytest.importorskip("nibabel")
    from daskseg._nifti import volume_to_nifti

    path = testdata / "seg_image_ct_true_fractional.dcm"
    if not path.exists():
        pytest.skip("no seg_image_ct_true_fractional.dcm in the shared testdata")
    reader = open_segmentation(path)
    image = nibabel.load(volume_to_nifti(reader, tmp_path / "fractions.nii.gz"))
    np.testing.assert_array_equal(np.asarray(image.dataobj).transpose(2, 1, 0, 3),
                                  reader.to_dask().compute())


def test_extended_offset_table_after_the_frame_items(tmp_path, thread_client):
    """The elements between the per-frame items and Pixel Data are read too."""
    series = shuffled_series()
    mask = volume_mask("LABELMAP")
    path = write_segmentation(mask, series, make_segment_descriptions(3), tmp_path / "seg.dcm",
                              transfer_syntax_uid=JPEG2000Lossless, use_extended_offset_table=True,
                              client=thread_client)
    reader = open_segmentation(path)
    assert "ExtendedOffsetTable" in reader.header
    same_as_highdicom(path, [ds.SOPInstanceUID for ds in series], combine_segments=True)


def test_reads_a_seg_made_by_dcmqi(tmp_path):
    """dcmqi's itkimage2segimage: no SpatialLocationsPreserved, its own frame order."""
    tool = _dcmqi_tool()
    from _geometry import ct_folder_and_nifti

    labels = np.zeros((6, 24, 20), np.uint8)  # frame k for series[k]
    labels[1:4, 3:15, 2:12] = 1
    labels[2:6, 10:20, 8:18] = 2
    series, folder, nifti = ct_folder_and_nifti(tmp_path, labels)
    out = _dcmqi_seg(tool, nifti, folder, tmp_path / "dcmqi.dcm")
    reader = open_segmentation(out)
    uids = [ds.SOPInstanceUID for ds in series]
    for options in (dict(), dict(combine_segments=True)):
        ours = reader.to_dask(source_sop_instance_uids=uids, **options).compute()
        theirs = hd.seg.segread(out).get_pixels_by_source_instance(
            uids, ignore_spatial_locations=True, assert_missing_frames_are_empty=True, **options)
        np.testing.assert_array_equal(ours, theirs)
    np.testing.assert_array_equal(ours, labels)
    json_index_equals_file_index(out)


def test_frames_without_source_references_are_placed_by_position(tmp_path, thread_client):
    import pydicom

    series = shuffled_series()
    mask = volume_mask("BINARY")
    path = write_segmentation(mask, series, make_segment_descriptions(3), tmp_path / "seg.dcm",
                              client=thread_client)
    ds = pydicom.dcmread(path)
    for item in ds.PerFrameFunctionalGroupsSequence[::2]:  # half of them, as dcmqi may do
        item.DerivationImageSequence = []
    ds.save_as(tmp_path / "stripped.dcm")
    ours = read_segmentation(tmp_path / "stripped.dcm", combine_segments=True).compute()
    order = hd.spatial.get_dataset_sort_index(series)
    np.testing.assert_array_equal(ours, mask[[k for k in order if mask[k].any()]])
    json_index_equals_file_index(tmp_path / "stripped.dcm")
    # An empty UID is no reference either (it made a plane of its own, or two frames of one).
    ds = pydicom.dcmread(path)
    for item in ds.PerFrameFunctionalGroupsSequence[1::2]:
        item.DerivationImageSequence[0].SourceImageSequence[0].ReferencedSOPInstanceUID = ""
    ds.save_as(tmp_path / "empty.dcm")
    ours = read_segmentation(tmp_path / "empty.dcm", combine_segments=True).compute()
    np.testing.assert_array_equal(ours, mask[[k for k in order if mask[k].any()]])
    json_index_equals_file_index(tmp_path / "empty.dcm")


def test_a_frame_also_derived_from_an_earlier_seg_keeps_its_own_segment_and_image(
        tmp_path, thread_client):
    """A refined SEG's frames may also reference the earlier SEG they came from (PS3.3
    C.7.6.16.2.6): its segment (ReferencedSegmentNumber, Table 10-3) or frame. The frame's own
    segment is its Segment Identification's (C.8.20.3.1), its image the Source Image item that
    is no SEG. The segments read swapped, without a word; an earlier SEG's frame number was
    taken as the image's (a helper's hunt)."""
    from pydicom.dataset import Dataset

    series = shuffled_series()
    mask = volume_mask("BINARY")
    path = write_segmentation(mask, series, make_segment_descriptions(3), tmp_path / "seg.dcm",
                              client=thread_client)
    uids = [image.SOPInstanceUID for image in series]
    earlier = hd.UID()

    def derived_from_the_earlier_seg(dataset, with_frames):
        for number, item in enumerate(dataset.PerFrameFunctionalGroupsSequence, 1):
            own = int(item.SegmentIdentificationSequence[0].ReferencedSegmentNumber)
            reference = Dataset()
            reference.ReferencedSOPClassUID = "1.2.840.10008.5.1.4.1.1.66.4"
            reference.ReferencedSOPInstanceUID = earlier
            if with_frames:
                reference.ReferencedFrameNumber = number
            else:
                reference.ReferencedSegmentNumber = 4 - own  # another of the earlier SEG's
            item.DerivationImageSequence[0].SourceImageSequence.append(reference)

    for with_frames in (False, True):
        refined = _edited(path, tmp_path, f"refined-{with_frames}",
                          functools.partial(derived_from_the_earlier_seg, with_frames=with_frames))
        same_as_highdicom(refined, uids)
        labels = same_as_highdicom(refined, uids, combine_segments=True)
        np.testing.assert_array_equal(labels, mask.astype(labels.dtype))
        json_index_equals_file_index(refined)


def test_a_one_image_seg_with_its_derivation_in_the_shared_groups_reads_by_that_image(
        tmp_path, thread_client):
    """A functional group the same for every frame may be shared (PS3.3 C.7.6.16), so a SEG
    of one image may share its Derivation Image. Read by that image's UID, its frames read as
    zeros with a warning that they referenced none (a helper's hunt); shared references to
    several images still tell no frame its own (placed by position)."""
    series = make_ct_series(1, 16, 16)
    mask = np.zeros((1, 16, 16, 2), dtype=bool)
    mask[0, 2:9, 3:7, 0] = mask[0, 10:14, 3:15, 1] = True
    path = write_segmentation(mask, series, make_segment_descriptions(2), tmp_path / "seg.dcm",
                              client=thread_client)

    def shared_derivation(dataset):
        derivation = dataset.PerFrameFunctionalGroupsSequence[0].DerivationImageSequence
        for item in dataset.PerFrameFunctionalGroupsSequence:
            del item.DerivationImageSequence
        dataset.SharedFunctionalGroupsSequence[0].DerivationImageSequence = derivation

    shared = _edited(path, tmp_path, "shared", shared_derivation)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no "reference no source image" warning
        ours = read_segmentation(
            shared, source_sop_instance_uids=[series[0].SOPInstanceUID]).compute()
    np.testing.assert_array_equal(ours, mask.astype(ours.dtype))
    np.testing.assert_array_equal(read_segmentation(shared).compute(), ours)


@pytest.mark.parametrize("segmentation_type", ["BINARY", "LABELMAP"])
def test_multiframe_source_by_frame_numbers(tmp_path, thread_client, segmentation_type):
    """source_frame_numbers equals highdicom's get_pixels_by_source_frame."""
    enhanced = enhanced_image(6, 24, 20)
    labels = np.zeros((6, 24, 20), np.uint8)  # labels[k] for frame k + 1
    labels[[0, 2, 3, 5], 3:20, 2:17] = np.random.default_rng(5).integers(0, 4, (4, 17, 15))
    labels[3] = np.where(labels[3] == 1, 0, labels[3])  # segment 1 absent from frame 4
    path = write_segmentation(labels, enhanced, make_segment_descriptions(3), tmp_path / "mf.dcm",
                              segmentation_type=segmentation_type, client=thread_client)
    uid = enhanced.SOPInstanceUID
    seg = hd.seg.segread(path)
    reader = open_segmentation(path)
    assert reader.source_sop_instance_uids == [uid] * 4
    assert sorted(reader.source_frame_numbers) == [1, 3, 4, 6]  # the frames with SEG frames
    # Shuffled, frames 2 and 5 without SEG frames, a repeat, and 9 past the source's last frame
    # (zeros, as highdicom's with assert_missing_frames_are_empty=True).
    frames = [4, 2, 6, 1, 5, 4, 9]
    for options in READS:
        ours = read_segmentation(path, source_frame_numbers=frames, chunks=3, **options).compute()
        theirs = seg.get_pixels_by_source_frame(uid, frames, assert_missing_frames_are_empty=True,
                                                **options)
        assert ours.dtype == theirs.dtype and ours.shape == theirs.shape
        np.testing.assert_array_equal(ours, theirs)
        # The default order: the frames with SEG frames sorted along the normal.
        default = reader.to_dask(**options).compute()
        np.testing.assert_array_equal(default, seg.get_pixels_by_source_frame(
            uid, reader.source_frame_numbers, **options))
    combined = reader.to_dask(source_frame_numbers=np.array(frames), combine_segments=True)
    expected = np.concatenate([labels, np.zeros((3, 24, 20), np.uint8)])[np.array(frames) - 1]
    np.testing.assert_array_equal(combined.compute(), expected)
    if segmentation_type == "LABELMAP" and importlib.util.find_spec("nibabel"):
        # NIfTI takes the planes of the SEG itself: the image is no series of single frames.
        with pytest.raises(SegmentationInputError, match="not one multi-frame image; leave it"):
            reader.to_nifti(tmp_path / "mf.nii.gz", source_images=[enhanced])


def test_multiframe_source_refusals(tmp_path, thread_client, testdata):
    enhanced = enhanced_image(3, 24, 20)
    labels = np.zeros((3, 24, 20), np.uint8)
    labels[1, 4:9, 5:10] = 1
    descriptions = make_segment_descriptions(1)
    path = write_segmentation(labels, enhanced, descriptions, tmp_path / "mf.dcm",
                              client=thread_client)
    with pytest.raises(SegmentationInputError, match="source_frame_numbers"):
        read_segmentation(path, source_sop_instance_uids=[enhanced.SOPInstanceUID])
    with pytest.raises(SegmentationInputError, match="not both"):
        read_segmentation(path, source_sop_instance_uids=[enhanced.SOPInstanceUID],
                          source_frame_numbers=[1])
    for bad in ([2, 0], [1.5], [True]):
        with pytest.raises(SegmentationInputError, match="1-based"):
            read_segmentation(path, source_frame_numbers=bad)
    with pytest.raises(SegmentationInputError, match="sequence of frame numbers"):
        read_segmentation(path, source_frame_numbers=2)
    with pytest.raises(SegmentationInputError, match="source_frame_numbers is empty"):
        read_segmentation(path, source_frame_numbers=[])
    # A SEG of single-frame images: its planes are chosen by source_sop_instance_uids.
    series = make_ct_series(3, 24, 20)
    single = write_segmentation(labels, series, descriptions, tmp_path / "series.dcm",
                                client=thread_client)
    assert open_segmentation(single).source_frame_numbers is None
    with pytest.raises(SegmentationInputError, match="single-frame images"):
        read_segmentation(single, source_frame_numbers=[1])
    tiled = testdata / "seg_image_sm_control.dcm"
    if tiled.exists():
        with pytest.raises(SegmentationInputError, match="tiled image"):
            read_segmentation(tiled, source_frame_numbers=[1])


def _stringified(value):
    """DICOM JSON with DS and IS values as strings, as some servers send them."""
    if isinstance(value, dict):
        if value.get("vr") in ("DS", "IS") and "Value" in value:
            return {**value, "Value": [str(v) for v in value["Value"]]}
        return {key: _stringified(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_stringified(item) for item in value]
    return value


def test_frame_items_from_dicom_json_equal_those_from_the_file(tmp_path, thread_client, testdata):
    """The DICOMweb reader's frame index (from the metadata's JSON) is the file reader's."""
    from daskseg._volframes import frame_items_from_json

    series = shuffled_series()
    paths = [write_segmentation(volume_mask(kind), series,
                                make_segment_descriptions(3, segmentation_type=kind),
                                tmp_path / f"{kind}.dcm", segmentation_type=kind,
                                client=thread_client)
             for kind in ("BINARY", "FRACTIONAL", "LABELMAP")]
    paths += sorted(testdata.glob("seg_image_ct_*.dcm"))[:3] if testdata.exists() else []
    for path in paths:
        json_index_equals_file_index(path)
    assert frame_items_from_json({}) == []


def json_index_equals_file_index(path):
    """The frame items read from the SEG's DICOM JSON (as a DICOMweb server gives it, DS and
    IS as numbers or as strings) equal those read from its file."""
    from daskseg._volframes import frame_items_from_json, scan_frame_items
    from daskseg._volread import read_volume_head

    header, _, _, raw, _ = read_volume_head(str(path))
    from_file = scan_frame_items(raw, 0, header.file_meta.TransferSyntaxUID.is_implicit_VR)
    metadata = pydicom.dcmread(path, stop_before_pixels=True).to_json_dict()
    assert len(from_file) == int(header.NumberOfFrames) > 0
    assert frame_items_from_json(metadata) == from_file, path.name
    assert frame_items_from_json(_stringified(metadata)) == from_file, path.name


@pytest.mark.parametrize("damage", [
    {"00209113": {"vr": "SQ", "Value": [{"00200032": {"vr": "DS", "Value": ["x", 1, 2]}}]}},
    {"00209113": {"vr": "SQ", "Value": {"00200032": 1}}},
    {"0062000A": {"vr": "SQ", "Value": [{"0062000B": {"vr": "US", "Value": ["x"]}}]}},
    {"00089124": "garbage"},
])
def test_damaged_dicom_json_is_a_header_error(damage):
    """What a server's damaged metadata raises is among the errors reported as a damaged
    header (``damaged_header``), never another exception."""
    from daskseg._frames import HEADER_DAMAGE
    from daskseg._volframes import frame_items_from_json

    with pytest.raises(HEADER_DAMAGE):
        frame_items_from_json({"52009230": {"vr": "SQ", "Value": [damage]}})


def test_planes_at_one_position_are_not_a_nifti_volume():
    from pydicom.dataset import Dataset

    from daskseg._nifti import _slice_spacing

    measures = Dataset()
    measures.SliceThickness = "2.5"
    assert _slice_spacing(np.array([5.0, 2.5]), measures) == 2.5
    assert _slice_spacing(np.array([3.0, 6.0]), measures) == 3.0  # not whole numbers of 2.5
    assert _slice_spacing(np.array([]), Dataset()) == 1.0
    with pytest.raises(SegmentationInputError, match="same position"):
        _slice_spacing(np.array([2.5, 0.0]), measures)


def test_to_nifti_refuses_a_source_of_another_series_or_a_slide(tmp_path, thread_client):
    pytest.importorskip("nibabel")
    from daskseg._nifti import read_nifti

    series = make_ct_series(6, 16, 24)
    labels = np.zeros((6, 16, 24), np.uint8)
    labels[2:4, 3:9, 5:20] = 1
    reader = open_segmentation(write_segmentation(
        labels, series, make_segment_descriptions(1), tmp_path / "seg.dcm",
        client=thread_client))
    out = reader.to_nifti(tmp_path / "labels.nii.gz", source_images=series, client=thread_client)
    assert read_nifti(out)[0].shape[2] == len(series)
    with pytest.raises(SegmentationInputError, match="source_images holds none of the images"):
        reader.to_nifti(tmp_path / "other.nii.gz", source_images=make_ct_series(6, 16, 24))
    with pytest.raises(SegmentationInputError, match="source_images must be the series the SEG "
                                                     "is of.*tiled image"):
        reader.to_nifti(tmp_path / "slide.nii.gz", source_images=[make_slide(64, 64)])
    # A series lacking an image that frames are of (a file lost in an export): the plane's
    # labels were dropped, its slice all zeros. Images without frames may be missing.
    with pytest.raises(SegmentationInputError, match="source_images lacks 1 of the images"):
        reader.to_nifti(tmp_path / "other.nii.gz", source_images=series[:2] + series[3:])
    out = reader.to_nifti(tmp_path / "part.nii.gz", source_images=series[1:5],
                          client=thread_client)
    assert read_nifti(out)[0].shape[2] == 4
    assert not (tmp_path / "other.nii.gz").exists() and not (tmp_path / "slide.nii.gz").exists()
    # A folder that does not exist is said to be one (it was an OSError naming a temporary file).
    with pytest.raises(SegmentationInputError, match="does not exist; create it first"):
        reader.to_nifti(tmp_path / "missing" / "labels.nii.gz")
    # A pixel spacing of 0 was read, then failed in highdicom's volume (a bare ValueError).
    from daskseg import SegmentationFileError

    def no_spacing(ds):
        ds.SharedFunctionalGroupsSequence[0].PixelMeasuresSequence[0].PixelSpacing = [0, 0]

    damaged = open_segmentation(_edited(reader.path, tmp_path, "no-spacing", no_spacing))
    with pytest.raises(SegmentationFileError, match=r"PixelSpacing \[0.0, 0.0\] are not"):
        damaged.to_nifti(tmp_path / "flat.nii.gz", client=thread_client)
    assert not (tmp_path / "flat.nii.gz").exists()
    # Rows and columns not at right angles (written as highdicom writes them: it checks no
    # angle), or not of unit length: highdicom's volume raised a bare ValueError, or the planes
    # were said to be off a regular grid.
    for k, cosines in enumerate([[1, 0, 0, 0.1, 1, 0], [2, 0, 0, 0, 2, 0]]):
        skewed = make_ct_series(6, 16, 24)
        for ds in skewed:
            ds.ImageOrientationPatient = cosines
        reader = open_segmentation(write_segmentation(
            labels, skewed, make_segment_descriptions(1), tmp_path / f"skewed{k}.dcm",
            client=thread_client))
        with pytest.raises(SegmentationFileError, match="is not two unit vectors at right angles"):
            reader.to_nifti(tmp_path / f"skewed{k}.nii.gz", client=thread_client)
        assert not (tmp_path / f"skewed{k}.nii.gz").exists()
    # Cosines of 4 decimals (DS as some scanners write it), 1.05e-4 from unit length: highdicom's
    # volume reads them, and so does to_nifti.
    rounded = make_ct_series(6, 16, 24, orientation=(0.8198, -0.5036, 0.2728,
                                                      0.4783, 0.864, 0.1574))
    reader = open_segmentation(write_segmentation(
        labels, rounded, make_segment_descriptions(1), tmp_path / "rounded.dcm",
        client=thread_client))
    assert read_nifti(reader.to_nifti(tmp_path / "rounded.nii.gz", client=thread_client))[0].any()


def test_to_nifti_takes_slices_off_the_grid_by_microns_not_by_distance_from_the_origin(
        tmp_path, thread_client):
    """A slice 2.5 µm off a 1 mm grid is off it (a NIfTI would misplace it), also 900 mm from
    the origin, where a relative tolerance would have added 9 µm."""
    pytest.importorskip("nibabel")
    labels = np.zeros((6, 16, 24), np.uint8)
    labels[:, 3:9, 5:20] = 1
    for shift, refused in [(0.0008, False), (0.0025, True)]:
        series = make_ct_series(6, 16, 24, slice_spacing=1.0, origin=(0.0, 0.0, -900.0))
        for ds in series:
            ds.SpacingBetweenSlices = 1.0
        series[3].ImagePositionPatient = [0.0, 0.0, -897.0 + shift]
        reader = open_segmentation(write_segmentation(
            labels, series, make_segment_descriptions(1), tmp_path / f"seg-{shift}.dcm",
            client=thread_client))
        out = tmp_path / f"labels-{shift}.nii.gz"
        if refused:
            with pytest.raises(SegmentationInputError, match="not a regular grid"):
                reader.to_nifti(out, client=thread_client)
        else:
            reader.to_nifti(out, client=thread_client)
        assert out.exists() != refused


@pytest.mark.parametrize("kind", ["volume", "slide"])
def test_a_transfer_syntax_uid_that_is_no_transfer_syntax_is_a_file_error(tmp_path, thread_client,
                                                                         kind):
    # pydicom's UID.is_deflated and .is_little_endian raise a bare ValueError for such a UID.
    import struct

    from daskseg import SegmentationFileError

    if kind == "volume":
        path = write_segmentation(volume_mask("BINARY"), shuffled_series(slices=7),
                                  make_segment_descriptions(3), tmp_path / "seg.dcm",
                                  client=thread_client)
    else:
        path = write_segmentation(np.eye(64, dtype=np.uint8), make_slide(64, 64, tile_size=(32, 32)),
                                  make_segment_descriptions(1), tmp_path / "seg.dcm",
                                  client=thread_client)
    data = path.read_bytes()
    at = data.find(b"\x02\x00\x10\x00UI")
    assert data[at + 8 : at + 28] == b"1.2.840.10008.1.2.1\x00"
    unknown = tmp_path / "unknown.dcm"  # same length, a UID no transfer syntax has
    unknown.write_bytes(data[: at + 8] + b"1.2.840.10008.1.2.9\x00" + data[at + 28 :])
    longer = tmp_path / "longer.dcm"  # its length field damaged: it swallows what follows
    longer.write_bytes(data[: at + 6] + struct.pack("<H", 24) + data[at + 8 :])
    for damaged in (unknown, longer):
        with pytest.raises(SegmentationFileError, match=r"is not a transfer syntax"):
            open_segmentation(damaged)


def _dcmqi_seg(tool, nifti, folder, out):
    """dcmqi's SEG of the label file ``nifti`` on the series in ``folder`` (test_cli's
    metadata), written to ``out``."""
    import json
    import subprocess

    from test_cli import DCMQI

    (out.parent / "meta.json").write_text(json.dumps(DCMQI))
    subprocess.run([tool, "--inputImageList", str(nifti), "--inputDICOMDirectory", str(folder),
                    "--inputMetadata", str(out.parent / "meta.json"), "--outputDICOM", str(out)],
                   check=True, capture_output=True, timeout=120)
    return out


def _dcmqi_tool():
    import pathlib
    import shutil
    import sys

    pytest.importorskip("nibabel")
    tool = shutil.which("itkimage2segimage") or shutil.which(
        "itkimage2segimage", path=str(pathlib.Path(sys.executable).parent))
    if tool is None:
        pytest.skip("dcmqi's itkimage2segimage is not installed (pip install dcmqi)")
    return tool


def test_nifti_with_the_series_refuses_a_seg_off_its_pixel_grid(tmp_path):
    """dcmqi writes a SEG's frames in the orientation of the NIfTI it is given (one turned to
    RAS runs the other way along rows and columns). Put at the series' slices, every label
    was misplaced; now refused, and the SEG's own geometry places them right."""
    import nibabel
    from _geometry import ct_folder_and_nifti

    tool = _dcmqi_tool()
    labels = np.zeros((6, 24, 20), np.uint8)  # every slice labelled: the SEG has them all
    labels[:, 3:15, 2:9] = 1
    labels[:, 10:20, 8:18] = 2
    series, folder, nifti = ct_folder_and_nifti(tmp_path, labels)
    given = nibabel.load(nifti)
    flip = np.diag([-1.0, -1.0, 1.0, 1.0])
    flip[:2, 3] = [given.shape[0] - 1, given.shape[1] - 1]  # voxel i -> shape - 1 - i
    turned = nibabel.Nifti1Image(np.ascontiguousarray(np.asarray(given.dataobj)[::-1, ::-1]),
                                 given.affine @ flip)
    nibabel.save(turned, tmp_path / "turned.nii.gz")
    reader = open_segmentation(_dcmqi_seg(tool, tmp_path / "turned.nii.gz", folder,
                                          tmp_path / "dcmqi.dcm"))
    orientation = reader.header.SharedFunctionalGroupsSequence[0].PlaneOrientationSequence[0]
    assert [float(v) for v in orientation.ImageOrientationPatient] != [
        float(v) for v in series[0].ImageOrientationPatient]
    with pytest.raises(SegmentationInputError, match="not on the pixel grid of the series' "
                                                     "images .its frames are oriented"):
        reader.to_nifti(tmp_path / "with-series.nii.gz", source_images=folder)
    assert not (tmp_path / "with-series.nii.gz").exists()
    reader.to_nifti(tmp_path / "own.nii.gz")
    own = nibabel.as_closest_canonical(nibabel.load(tmp_path / "own.nii.gz"))
    expected = nibabel.as_closest_canonical(given)
    np.testing.assert_allclose(own.affine, expected.affine, atol=1e-3)
    np.testing.assert_array_equal(np.asarray(own.dataobj), np.asarray(expected.dataobj))


def test_frames_a_hair_off_their_plane_are_placed_on_it(tmp_path, thread_client):
    """A frame without a source reference, 1e-8 mm from its plane's frames but on the other
    side of a rounding boundary (-47.5005 and -47.50049999), made a plane of its own, and its
    labels vanished from a read by the images' UIDs."""
    series = shuffled_series()
    path = write_segmentation(volume_mask("BINARY"), series, make_segment_descriptions(3),
                              tmp_path / "seg.dcm", client=thread_client)
    uids = [ds.SOPInstanceUID for ds in series]
    expected = read_segmentation(path, source_sop_instance_uids=uids).compute()
    ds = pydicom.dcmread(path)
    items = ds.PerFrameFunctionalGroupsSequence
    image = items[0].DerivationImageSequence[0].SourceImageSequence[0].ReferencedSOPInstanceUID
    plane = [item for item in items
             if item.DerivationImageSequence[0].SourceImageSequence[0].ReferencedSOPInstanceUID
             == image]
    assert len(plane) >= 2
    # Two DS values 1e-8 apart, on either side of a micrometre's rounding.
    base = round(float(plane[0].PlanePositionSequence[0].ImagePositionPatient[2]))
    z, hair = next((f"{a:.4f}", f"{a + d:.8f}") for a in (base + 0.0005, base - 0.0005)
                   for d in (-1e-8, 1e-8)
                   if round(float(f"{a:.4f}"), 3) != round(float(f"{a + d:.8f}"), 3))
    for item in plane:
        item.PlanePositionSequence[0].ImagePositionPatient[2] = z
    plane[-1].PlanePositionSequence[0].ImagePositionPatient[2] = hair
    plane[-1].DerivationImageSequence = []
    ds.save_as(tmp_path / "hair.dcm")
    reader = open_segmentation(tmp_path / "hair.dcm")
    assert len(reader.source_sop_instance_uids) == len(open_segmentation(path)
                                                       .source_sop_instance_uids)
    np.testing.assert_array_equal(
        read_segmentation(tmp_path / "hair.dcm", source_sop_instance_uids=uids).compute(),
        expected)


def test_a_plane_of_frames_without_references_warns_and_nifti_places_it(tmp_path, thread_client):
    """All frames of a plane without their reference: a read by the images' UIDs cannot
    place it (it has none) and says so; NIfTI with the series places it by position."""
    nibabel = pytest.importorskip("nibabel")
    series = shuffled_series()
    mask = volume_mask("LABELMAP")
    path = write_segmentation(mask, series, make_segment_descriptions(3), tmp_path / "seg.dcm",
                              segmentation_type="LABELMAP", client=thread_client)
    reader = open_segmentation(path)
    reader.to_nifti(tmp_path / "whole.nii.gz", source_images=series)
    ds = pydicom.dcmread(path)
    ds.PerFrameFunctionalGroupsSequence[1].DerivationImageSequence = []  # LABELMAP: one a plane
    ds.save_as(tmp_path / "unreferenced.dcm")
    stripped = open_segmentation(tmp_path / "unreferenced.dcm")
    assert "" in stripped.source_sop_instance_uids
    with pytest.warns(UserWarning, match="1 of the SEG's planes holds only frames that "
                                         "reference no source image"):
        stripped.to_dask(source_sop_instance_uids=[s.SOPInstanceUID for s in series])
    stripped.to_nifti(tmp_path / "placed.nii.gz", source_images=series)
    np.testing.assert_array_equal(np.asarray(nibabel.load(tmp_path / "placed.nii.gz").dataobj),
                                  np.asarray(nibabel.load(tmp_path / "whole.nii.gz").dataobj))
    # No frame with its reference (as dcmqi may write them): the series is the one the header
    # lists, else one of the SEG's frame of reference; it was refused as another series (a
    # helper's hunt).
    for item in ds.PerFrameFunctionalGroupsSequence:
        item.DerivationImageSequence = []
    ds.save_as(tmp_path / "none.dcm")
    open_segmentation(tmp_path / "none.dcm").to_nifti(tmp_path / "none.nii.gz", source_images=series)
    np.testing.assert_array_equal(np.asarray(nibabel.load(tmp_path / "none.nii.gz").dataobj),
                                  np.asarray(nibabel.load(tmp_path / "whole.nii.gz").dataobj))
    del ds.ReferencedSeriesSequence
    if "SourceImageSequence" in ds:
        del ds.SourceImageSequence
    ds.save_as(tmp_path / "unlisted.dcm")
    open_segmentation(tmp_path / "unlisted.dcm").to_nifti(tmp_path / "unlisted.nii.gz",
                                                          source_images=series)
    other = make_ct_series(len(series), int(series[0].Rows), int(series[0].Columns))
    with pytest.raises(SegmentationInputError, match="references no source image and its frame "
                                                     "of reference .* is another series"):
        open_segmentation(tmp_path / "unlisted.dcm").to_nifti(tmp_path / "other.nii.gz",
                                                              source_images=other)
    assert not (tmp_path / "other.nii.gz").exists()


def test_a_spacing_between_slices_that_disagrees_with_the_planes(tmp_path, thread_client):
    """highdicom copies SpacingBetweenSlices from the images, whatever their positions say:
    twice the planes' steps was called 'not a regular grid'. The series' positions decide."""
    nibabel = pytest.importorskip("nibabel")
    series = make_ct_series(5, 16, 12)
    for ds in series:
        ds.SpacingBetweenSlices = 2 * float(ds.SliceThickness or 1.0) + 7.0
    labels = np.zeros((5, 16, 12), np.uint8)
    labels[:, 2:9, 3:8] = 1
    path = write_segmentation(labels, series, make_segment_descriptions(1), tmp_path / "s.dcm",
                              segmentation_type="LABELMAP", client=thread_client)
    reader = open_segmentation(path)
    with pytest.raises(SegmentationInputError, match="SpacingBetweenSlices, .* mm, disagrees "
                                                     "with the steps between its planes"):
        reader.to_nifti(tmp_path / "alone.nii.gz")
    reader.to_nifti(tmp_path / "series.nii.gz", source_images=series)
    image = nibabel.load(tmp_path / "series.nii.gz")
    assert int(np.asarray(image.dataobj).sum()) == int(labels.sum())
    positions = load_source_series(series).positions
    steps = np.linalg.norm(np.diff(positions[np.argsort(positions[:, 2])], axis=0), axis=1)
    assert np.isclose(np.linalg.norm(image.affine[:3, 2]), steps.min())


def test_a_series_folder_may_hold_an_earlier_seg_and_no_empty_images(tmp_path, thread_client):
    """A SEG written into its series' folder was taken for a multi-frame source image on the
    next run; images of 0 rows were refused with a transfer syntax's message."""
    series = make_ct_series(4, 16, 12)
    for ds in series:
        ds.save_as(tmp_path / f"{ds.SOPInstanceUID}.dcm", enforce_file_format=True)
    labels = np.zeros((4, 16, 12), np.uint8)
    labels[1:3, 2:9, 3:8] = 1
    first = write_segmentation(labels, tmp_path, make_segment_descriptions(1),
                               tmp_path / "seg.dcm", client=thread_client)
    again = write_segmentation(labels, tmp_path, make_segment_descriptions(1),
                               tmp_path / "again.dcm", client=thread_client)
    assert (open_segmentation(again).source_sop_instance_uids
            == open_segmentation(first).source_sop_instance_uids)
    for ds in series:
        ds.Rows = 0
    with pytest.raises(SegmentationInputError, match="frames are 0 x 12 pixels .Rows x Columns"):
        write_segmentation(labels, series, make_segment_descriptions(1), tmp_path / "x.dcm",
                           client=None)
    assert not (tmp_path / "x.dcm").exists()


def test_a_nifti_larger_than_the_memory_available_is_refused_before_decoding(
        tmp_path, thread_client, monkeypatch):
    """A NIfTI is made whole in memory: one that cannot be (117 segments on a fourth axis,
    say) is refused at once with what to do, not after the machine runs out of memory."""
    pytest.importorskip("nibabel")
    import psutil

    from daskseg._nifti import volume_to_nifti

    series = shuffled_series()
    labels = volume_mask("LABELMAP")[np.argsort(hd.spatial.get_dataset_sort_index(series))]
    seg = write_segmentation(labels, series, make_segment_descriptions(3), tmp_path / "seg.dcm",
                             client=thread_client)
    reader = open_segmentation(seg)
    voxels = reader.to_numpy(combine_segments=True).size

    class Memory:
        available = 2 * voxels  # the labels fit, their three segments apart do not

    monkeypatch.setattr(psutil, "virtual_memory", lambda: Memory)
    volume_to_nifti(reader, tmp_path / "labels.nii.gz")
    with pytest.raises(SegmentationInputError, match="leave out --segment-axis"):
        volume_to_nifti(reader, tmp_path / "planes.nii.gz", combine_segments=False)
    assert not (tmp_path / "planes.nii.gz").exists()
    # The way it names for a volume larger than memory exists (a volume SEG had no to_zarr).
    Memory.available = voxels // 2
    with pytest.raises(SegmentationInputError, match=r"\. Write its planes to Zarr instead, "
                                                     r"block by block \(to_zarr;"):
        volume_to_nifti(reader, tmp_path / "labels.nii.gz")
    np.testing.assert_array_equal(reader.to_zarr(tmp_path / "labels.zarr",
                                                 combine_segments=True)[:],
                                  reader.to_numpy(combine_segments=True))


@pytest.mark.parametrize("kind", ["slide", "volume"])
def test_a_un_sequence_of_undefined_length_in_the_frame_items_is_read_as_implicit(tmp_path, kind):
    """PS3.5 6.2.2: a UN element of undefined length holds a sequence in Implicit VR (toolkits
    write private sequences so); walked as explicit VR, the file was called cut short."""
    import struct

    from pydicom.uid import ExplicitVRLittleEndian

    if kind == "slide":
        source = [make_slide(128, 128, tile_size=(64, 64))]
        mask = np.zeros((1, 128, 128), np.uint8)
        mask[0, 10:80, 20:100] = 1
        options = dict(tile_pixel_array=True)
    else:
        source = make_ct_series(4, 16, 16)
        mask = np.zeros((4, 16, 16), np.uint8)
        mask[1:3, 4:9, 2:12] = 1
        options = {}
    seg = hd.seg.Segmentation(source, mask, "BINARY", make_segment_descriptions(1), hd.UID(), 1,
                              hd.UID(), 1, "m", "m", "1", "1",
                              transfer_syntax_uid=ExplicitVRLittleEndian, **options)
    # Undefined lengths around it, so that the element can be replaced by a longer one.
    seg["PerFrameFunctionalGroupsSequence"].is_undefined_length = True
    for item in seg.PerFrameFunctionalGroupsSequence:
        item.is_undefined_length_sequence_item = True
        item.private_block(0x0099, "DASKSEG TEST", create=True).add_new(0x01, "OB", b"PLACEHOLDER!")
    path = tmp_path / "un.dcm"
    seg.save_as(path)

    def implicit(tag, value):
        return struct.pack("<HHI", tag >> 16, tag & 0xFFFF, len(value)) + value

    # (0099,1001) UN of undefined length: an undefined-length item in Implicit VR, whose
    # elements read as explicit VR would be lengths of garbage.
    inner = implicit(0x00990010, b"DASKSEG TEST") + implicit(0x00991010, struct.pack("<I", 7))
    un = (b"\x99\x00\x01\x10UN\x00\x00\xff\xff\xff\xff" + b"\xfe\xff\x00\xe0\xff\xff\xff\xff"
          + inner + b"\xfe\xff\x0d\xe0\x00\x00\x00\x00" + b"\xfe\xff\xdd\xe0\x00\x00\x00\x00")
    placeholder = b"\x99\x00\x01\x10OB\x00\x00" + struct.pack("<I", 12) + b"PLACEHOLDER!"
    data = path.read_bytes()
    assert data.count(placeholder) == seg.NumberOfFrames
    path.write_bytes(data.replace(placeholder, un))
    ours = read_segmentation(path).compute()
    theirs = hd.seg.segread(path)
    if kind == "slide":
        np.testing.assert_array_equal(ours, theirs.get_total_pixel_matrix())
    else:
        uids = open_segmentation(path).source_sop_instance_uids
        np.testing.assert_array_equal(ours, same_as_highdicom(path, uids))
    assert ours.any()


def test_a_plane_orientation_of_each_frame_reads_as_a_shared_one(tmp_path, thread_client):
    """PS3.3 C.7.6.16 lets a SEG keep its Plane Orientation in every frame's items: it was
    refused at open (an AttributeError on the shared groups). Frames of no one orientation (a
    SEG of a scout's planes), or without positions, open with a warning, their planes in the
    order of their first frames, where opening failed with advice it could not take."""
    pytest.importorskip("nibabel")
    import copy

    from daskseg._nifti import read_nifti

    series = shuffled_series()
    mask = volume_mask("BINARY")
    path = write_segmentation(mask, series, make_segment_descriptions(3), tmp_path / "seg.dcm",
                              client=thread_client)

    def per_frame(ds):
        shared = ds.SharedFunctionalGroupsSequence[0]
        for item in ds.PerFrameFunctionalGroupsSequence:
            item.PlaneOrientationSequence = copy.deepcopy(shared.PlaneOrientationSequence)
        del shared.PlaneOrientationSequence

    moved = _edited(path, tmp_path, "per-frame", per_frame)
    reader, theirs = open_segmentation(path), open_segmentation(moved)
    assert theirs.plane_orientation == reader.plane_orientation and len(reader.plane_orientation) == 6
    assert theirs.source_sop_instance_uids == reader.source_sop_instance_uids
    np.testing.assert_array_equal(theirs.to_numpy(), reader.to_numpy())
    np.testing.assert_array_equal(
        theirs.to_numpy(), same_as_highdicom(moved, theirs.source_sop_instance_uids))
    for name, seg in (("shared", reader), ("own", theirs)):
        seg.to_nifti(tmp_path / f"{name}.nii.gz", client=thread_client)
    (ours, affine), (expected, expected_affine) = (read_nifti(tmp_path / "own.nii.gz"),
                                                   read_nifti(tmp_path / "shared.nii.gz"))
    np.testing.assert_array_equal(np.asarray(ours), np.asarray(expected))
    np.testing.assert_allclose(affine, expected_affine)

    def one_turned(ds):
        per_frame(ds)
        first = ds.PerFrameFunctionalGroupsSequence[0].PlaneOrientationSequence[0]
        first.ImageOrientationPatient = [0, 1, 0, 0, 0, -1]

    turned = _edited(path, tmp_path, "turned", one_turned)
    with pytest.warns(UserWarning, match="no one plane orientation, so its planes cannot be "
                                         "sorted .* order of their first frames"):
        scout = open_segmentation(turned)
    assert scout.plane_orientation is None
    first_frames = [item.DerivationImageSequence[0].SourceImageSequence[0]
                    .ReferencedSOPInstanceUID
                    for item in pydicom.dcmread(turned).PerFrameFunctionalGroupsSequence]
    assert scout.source_sop_instance_uids == list(dict.fromkeys(first_frames))
    uids = reader.source_sop_instance_uids
    np.testing.assert_array_equal(scout.to_numpy(source_sop_instance_uids=uids),
                                  reader.to_numpy())


@pytest.mark.parametrize("other", ["each", "one"])
def test_frames_derived_from_two_images_are_found_by_either(tmp_path, other):
    """highdicom finds a frame by any of its source images. Frames of a PET and a CT image
    (PET listed first, both series listed) read as zeros by the CT's UIDs: now the CT's find
    the PET's planes. Frames that all name one image first are frames of one image, refused
    (its image, of several planes, finds none of them)."""
    import copy

    from pydicom.sequence import Sequence as DicomSequence

    ct, pet = make_ct_series(6, 16, 16), make_ct_series(6, 16, 16)
    mask = np.zeros((6, 16, 16, 2), bool)
    mask[1:4, 3:9, 2:12, 0] = True
    mask[2:5, 6:12, 4:14, 1] = True
    seg = hd.seg.Segmentation(ct, mask, "BINARY", make_segment_descriptions(2), hd.UID(), 1,
                              hd.UID(), 1, "m", "m", "1", "1")
    pet_of = {c.SOPInstanceUID: p.SOPInstanceUID for c, p in zip(ct, pet)}
    for item in seg.PerFrameFunctionalGroupsSequence:
        own = item.DerivationImageSequence[0].SourceImageSequence[0]
        first = copy.deepcopy(own)
        first.ReferencedSOPInstanceUID = (pet_of[own.ReferencedSOPInstanceUID] if other == "each"
                                          else pet[0].SOPInstanceUID)
        item.DerivationImageSequence[0].SourceImageSequence = DicomSequence([first, own])
    listed = pydicom.Dataset()
    listed.SeriesInstanceUID = pet[0].SeriesInstanceUID
    listed.ReferencedInstanceSequence = DicomSequence()
    for image in pet:
        reference = pydicom.Dataset()
        reference.ReferencedSOPClassUID = image.SOPClassUID
        reference.ReferencedSOPInstanceUID = image.SOPInstanceUID
        listed.ReferencedInstanceSequence.append(reference)
    seg.ReferencedSeriesSequence.append(listed)
    path = tmp_path / "two.dcm"
    seg.save_as(path)
    ct_uids = [image.SOPInstanceUID for image in ct]
    if other == "one":
        with pytest.raises(SegmentationInputError, match="both hold the same segment of the "
                                                         "same source image"):
            open_segmentation(path)
        return
    expected = same_as_highdicom(path, ct_uids)
    assert expected.any()
    np.testing.assert_array_equal(
        read_segmentation(path, source_sop_instance_uids=ct_uids).compute(), expected)
    reader = open_segmentation(path)  # the planes are the first images', the PET's
    assert set(reader.source_sop_instance_uids) <= set(pet_of.values())
    pet_uids = [pet_of[uid] for uid in ct_uids]
    np.testing.assert_array_equal(reader.to_numpy(source_sop_instance_uids=pet_uids),
                                  same_as_highdicom(path, pet_uids))
    # A CT image asked for with the PET image whose plane it finds: one plane, asked twice.
    np.testing.assert_array_equal(
        reader.to_numpy(source_sop_instance_uids=[ct_uids[2], pet_uids[2]]),
        same_as_highdicom(path, [ct_uids[2], pet_uids[2]]))
