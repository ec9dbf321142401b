"""read_segmentation / open_segmentation against highdicom's get_total_pixel_matrix."""

from __future__ import annotations

import contextlib
import os

import dask
import dask.array as da
from dask.core import flatten
import highdicom as hd
import numpy as np
import pydicom
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
import zarr
from pydicom.encaps import encapsulate, encapsulate_extended, generate_frames
from pydicom.uid import (
    ExplicitVRLittleEndian,
    HTJ2KLossless,
    ImplicitVRLittleEndian,
    JPEG2000Lossless,
    JPEGLSLossless,
    RLELossless,
)

import daskseg
import daskseg._decode
from daskseg import (
    ALLOWED_TRANSFER_SYNTAXES,
    DestinationExistsError,
    SegmentationFileError,
    SegmentationInputError,
    SegmentationTypeError,
    open_segmentation,
    read_segmentation,
    write_segmentation,
)
from daskseg.synthetic import make_segment_descriptions, make_slide, make_tissue_mask

# Every type x transfer syntax that daskseg supports (as highdicom allows them).
MATRIX = [(kind, uid) for kind, uids in ALLOWED_TRANSFER_SYNTAXES.items() for uid in uids]


def highdicom_file(folder, segmentation_type, transfer_syntax, organization, *, rows=230,
                   columns=170, tile=(64, 48), n_segments=3, fractional_values=False, name="seg"):
    """A SEG written by highdicom, with edge tiles and, for TILED_SPARSE, omitted frames."""
    source = make_slide(rows, columns, tile_size=tile)
    stacked = segmentation_type == "FRACTIONAL"
    mask = make_tissue_mask(rows, columns, n_segments, chunks=64, stacked=stacked).compute()
    if fractional_values:
        mask = mask * np.linspace(0.2, 1.0, columns, dtype=np.float32)[None, :, None]
    # highdicom 0.28 does not write HTJ2K: its JPEG 2000 file, transcoded frame by frame.
    written_syntax = JPEG2000Lossless if transfer_syntax == HTJ2KLossless else transfer_syntax
    seg = hd.seg.Segmentation(
        [source], mask[None], segmentation_type,
        make_segment_descriptions(n_segments, segmentation_type=segmentation_type),
        hd.UID(), 1, hd.UID(), 1, "m", "m", "1", "1", transfer_syntax_uid=written_syntax,
        tile_pixel_array=True, dimension_organization_type=organization,
        omit_empty_frames=organization == "TILED_SPARSE",
    )
    if transfer_syntax == HTJ2KLossless:
        seg = transcoded_to_htj2k(seg)
    path = folder / f"{name}.dcm"
    seg.save_as(path)
    return path


def transcoded_to_htj2k(dataset):
    """The dataset with every frame re-encoded as HTJ2K by imagecodecs (not daskseg)."""
    import imagecodecs

    frames = generate_frames(dataset.PixelData, number_of_frames=int(dataset.NumberOfFrames))
    dataset.PixelData = encapsulate([
        bytes(imagecodecs.htj2k_encode(imagecodecs.jpeg2k_decode(frame), level=0, reversible=True))
        for frame in frames
    ])
    dataset.file_meta.TransferSyntaxUID = HTJ2KLossless
    return dataset


def variants(segment_numbers):
    yield {}
    yield {"combine_segments": True}
    yield {"combine_segments": True, "relabel": True, "segment_numbers": segment_numbers[::-1]}
    yield {"segment_numbers": segment_numbers[-1:]}
    yield {"rescale_fractional": False}
    yield {"dtype": np.uint16, "combine_segments": True}


def assert_same_as_highdicom(path, **kwargs):
    expected_error = None
    try:
        expected = hd.seg.segread(path).get_total_pixel_matrix(**kwargs)
    except (RuntimeError, ValueError) as error:  # overlap, or fractions cannot be combined
        expected_error = error
    if expected_error is not None:
        with pytest.raises(type(expected_error)):
            read_segmentation(path, **kwargs).compute()
        return
    got = read_segmentation(path, chunks=100, **kwargs)
    assert got.shape == expected.shape
    computed = got.compute()
    assert computed.dtype == expected.dtype, kwargs
    np.testing.assert_array_equal(computed, expected)


@pytest.mark.parametrize("organization", ["TILED_SPARSE", "TILED_FULL"])
@pytest.mark.parametrize("segmentation_type, transfer_syntax", MATRIX)
def test_equals_highdicom(tmp_path, segmentation_type, transfer_syntax, organization):
    path = highdicom_file(tmp_path, segmentation_type, transfer_syntax, organization,
                          fractional_values=segmentation_type == "FRACTIONAL")
    seg = open_segmentation(path)
    n_channels = 1 if segmentation_type == "LABELMAP" else len(seg.segment_numbers)
    all_frames = n_channels * seg.grid_shape[0] * seg.grid_shape[1]
    if organization == "TILED_SPARSE":
        assert seg.number_of_frames < all_frames  # some empty tiles were left out
    else:
        assert seg.number_of_frames == all_frames
    with dask.config.set(scheduler="synchronous"):
        for kwargs in variants(seg.segment_numbers):
            assert_same_as_highdicom(path, **kwargs)


@pytest.mark.parametrize("tile", [(10, 10), (7, 9), (5, 3)])
@pytest.mark.parametrize("organization", ["TILED_SPARSE", "TILED_FULL"])
def test_native_binary_frames_straddling_bytes(tmp_path, tile, organization):
    path = highdicom_file(tmp_path, "BINARY", ExplicitVRLittleEndian, organization,
                          rows=41, columns=37, tile=tile)
    with dask.config.set(scheduler="synchronous"):
        assert_same_as_highdicom(path, combine_segments=True)
        assert_same_as_highdicom(path)


def test_files_from_other_software(testdata):
    tiled = ["seg_image_sm_control.dcm", "seg_image_sm_numbers.dcm", "seg_image_sm_dots.dcm",
             "seg_image_sm_dots_tiled_full.dcm", "seg_image_sm_control_labelmap.dcm"]
    with dask.config.set(scheduler="synchronous"):
        for name in tiled:
            numbers = open_segmentation(testdata / name).segment_numbers
            for kwargs in variants(numbers):
                assert_same_as_highdicom(testdata / name, **kwargs)


def test_untiled_seg_is_refused_by_the_tiled_reader(testdata):
    # read_segmentation reads it as a volume (test_volume_read); the tiled reader refuses it.
    with pytest.raises(SegmentationInputError, match="tiled"):
        daskseg.SegmentationReader(testdata / "seg_image_ct_binary.dcm")


def test_reader_describes_the_seg(tmp_path):
    path = highdicom_file(tmp_path, "LABELMAP", RLELossless, "TILED_SPARSE")
    seg = open_segmentation(path)
    assert seg.segmentation_type == "LABELMAP"
    assert seg.segment_numbers == [1, 2, 3]
    assert [d.segment_label for d in seg.segment_descriptions] == ["Segment 1", "Segment 2", "Segment 3"]
    assert seg.tile_size == (64, 48)
    assert seg.shape == (230, 170)
    assert seg.grid_shape == (4, 4)
    assert seg.number_of_frames == int(pydicom.dcmread(path).NumberOfFrames)
    with pytest.raises(SegmentationInputError, match="not in this SEG"):
        seg.to_dask(segment_numbers=[7])


def test_slicing_decodes_only_the_frames_it_touches(tmp_path, monkeypatch):
    path = highdicom_file(tmp_path, "BINARY", JPEG2000Lossless, "TILED_FULL", rows=512,
                          columns=512, tile=(64, 64))
    decoded = []
    original = daskseg._decode._frame

    def counting(layout, data, frame):
        decoded.append(frame[0])
        return original(layout, data, frame)

    monkeypatch.setattr(daskseg._decode, "_frame", counting)
    array = read_segmentation(path, combine_segments=True, chunks=64)
    region = array[130:190, 70:120]  # tile rows 2..2, tile columns 1..1
    with dask.config.set(scheduler="synchronous"):
        got = region.compute()
    expected = hd.seg.segread(path).get_total_pixel_matrix(combine_segments=True)[130:190, 70:120]
    np.testing.assert_array_equal(got, expected)
    # One tile, three segments: three frames decoded, of 3 x 64 in the file.
    assert sorted(decoded) == [k * 64 + 2 * 8 + 1 for k in range(3)]


def test_round_trip_of_daskseg_writer(tmp_path, dask_client):
    write_segmentation = getattr(daskseg, "write_segmentation", None)
    if write_segmentation is None:
        pytest.skip("daskseg.write_segmentation is not there yet")
    rows, columns = 700, 900
    source = make_slide(rows, columns, tile_size=(128, 128))
    labels = make_tissue_mask(rows, columns, 4, chunks=(200, 300))
    for organization in ["TILED_SPARSE", "TILED_FULL"]:
        path = write_segmentation(
            labels, source, make_segment_descriptions(4), tmp_path / f"{organization}.dcm",
            transfer_syntax_uid=JPEG2000Lossless, dimension_organization_type=organization,
            client=dask_client,
        )
        got = dask_client.compute(read_segmentation(path, combine_segments=True)).result()
        np.testing.assert_array_equal(got, labels.compute())


@pytest.mark.parametrize("use_client", [False, True])
def test_to_zarr(tmp_path, dask_client, use_client, capsys):
    path = highdicom_file(tmp_path, "BINARY", JPEG2000Lossless, "TILED_SPARSE", rows=400,
                          columns=300)
    store = tmp_path / "out.zarr"
    result = open_segmentation(path).to_zarr(
        str(store), combine_segments=True, chunks=128, progress=True,
        client=dask_client if use_client else None,
    )
    assert "decoding blocks" in capsys.readouterr().err
    on_disk = zarr.open_array(str(store), mode="r")
    assert on_disk.chunks == (128, 144)  # whole tiles of 64 x 48 near the 128 asked
    np.testing.assert_array_equal(
        on_disk[:], hd.seg.segread(path).get_total_pixel_matrix(combine_segments=True)
    )
    assert result.shape == (400, 300)


@pytest.mark.parametrize("use_client", [False, True])
@pytest.mark.parametrize("kind", ["memory", "zip", "wrapped memory"])
def test_to_zarr_into_a_store_of_this_process(tmp_path, dask_client, use_client, kind):
    # Workers wrote into their own copies of an in-memory store (it stayed all zeros here), and
    # dask's tokenize reopened a zip for writing, over what was written.
    path = highdicom_file(tmp_path, "BINARY", JPEG2000Lossless, "TILED_SPARSE", rows=400,
                          columns=300)
    expected = hd.seg.segread(path).get_total_pixel_matrix(combine_segments=True)
    assert expected.any()
    zip_path = tmp_path / "out.zip"
    store = {
        "memory": zarr.storage.MemoryStore,
        "zip": lambda: zarr.storage.ZipStore(zip_path, mode="w"),
        "wrapped memory": lambda: zarr.storage.LoggingStore(zarr.storage.MemoryStore(),
                                                            log_level="DEBUG"),
    }[kind]()
    result = open_segmentation(path).to_zarr(
        store, combine_segments=True, chunks=128, client=dask_client if use_client else None,
    )
    np.testing.assert_array_equal(result[:], expected)
    if kind == "zip":
        store.close()
        with zarr.storage.ZipStore(zip_path, mode="r") as reopened:
            np.testing.assert_array_equal(zarr.open_array(reopened, mode="r")[:], expected)


@pytest.mark.parametrize("use_client", [False, True])
def test_to_numpy_equals_highdicom(tmp_path, dask_client, use_client, capsys):
    path = highdicom_file(tmp_path, "BINARY", JPEG2000Lossless, "TILED_SPARSE", rows=400,
                          columns=300)
    reader = open_segmentation(path)
    client = dask_client if use_client else None
    for kwargs in [{"combine_segments": True}, {"segment_numbers": [3, 1]}]:
        got = reader.to_numpy(chunks=128, progress=True, client=client, **kwargs)
        expected = hd.seg.segread(path).get_total_pixel_matrix(**kwargs)
        assert isinstance(got, np.ndarray) and got.dtype == expected.dtype
        np.testing.assert_array_equal(got, expected)
    assert "decoding blocks" in capsys.readouterr().err


def test_to_numpy_raises_what_a_block_raises(tmp_path, dask_client):
    # Two segments over the same pixels cannot be combined, as in highdicom.
    mask = np.zeros((1, 200, 150, 2), dtype=bool)
    mask[0, 100:180, 20:140] = True  # both segments
    path = tmp_path / "overlap.dcm"
    hd.seg.Segmentation(
        [make_slide(200, 150, tile_size=(64, 48))], mask, "BINARY",
        make_segment_descriptions(2), hd.UID(), 1, hd.UID(), 1, "m", "m", "1", "1",
        transfer_syntax_uid=JPEG2000Lossless, tile_pixel_array=True,
    ).save_as(path)
    with pytest.raises(RuntimeError, match="overlap"):
        open_segmentation(path).to_numpy(combine_segments=True, client=dask_client)


def test_fsspec_urls(tmp_path):
    fsspec = pytest.importorskip("fsspec")
    path = highdicom_file(tmp_path, "FRACTIONAL", RLELossless, "TILED_SPARSE")
    memory = fsspec.filesystem("memory")
    memory.pipe("/seg.dcm", path.read_bytes())
    expected = hd.seg.segread(path).get_total_pixel_matrix()
    with dask.config.set(scheduler="synchronous"):
        for url in ["memory://seg.dcm", path.as_uri()]:
            np.testing.assert_array_equal(read_segmentation(url).compute(), expected)


def test_lazy_array_is_a_dask_array(tmp_path):
    path = highdicom_file(tmp_path, "BINARY", ExplicitVRLittleEndian, "TILED_FULL")
    array = read_segmentation(path, chunks=100)
    assert isinstance(array, da.Array)
    assert array.shape == (230, 170, 3)
    # Whole tiles per chunk (the last may end in a partial tile).
    assert array.chunks[:2] == ((128, 102), (96, 74))


def rewrite_pixel_data(original, path, layout):
    """Copy a SEG with its frames encapsulated anew: no BOT, an Extended Offset Table, or
    two fragments per frame with a BOT."""
    ds = pydicom.dcmread(original)
    frames = list(generate_frames(ds.PixelData, number_of_frames=int(ds.NumberOfFrames)))
    if layout == "no BOT":
        ds.PixelData = encapsulate(frames, has_bot=False)
    elif layout == "extended":
        ds.PixelData, ds.ExtendedOffsetTable, ds.ExtendedOffsetTableLengths = (
            encapsulate_extended(frames)
        )
    else:
        ds.PixelData = encapsulate(frames, fragments_per_frame=2, has_bot=layout == "2 fragments, BOT")
    ds["PixelData"].is_undefined_length = True
    ds.save_as(path)
    return path


@pytest.mark.parametrize("layout", ["no BOT", "extended", "2 fragments, BOT"])
@pytest.mark.parametrize("transfer_syntax", [JPEG2000Lossless, RLELossless])
def test_offset_tables_and_fragments(tmp_path, layout, transfer_syntax):
    original = highdicom_file(tmp_path, "LABELMAP", transfer_syntax, "TILED_SPARSE")
    path = rewrite_pixel_data(original, tmp_path / "rewritten.dcm", layout)
    expected = hd.seg.segread(original).get_total_pixel_matrix(combine_segments=True)
    with dask.config.set(scheduler="synchronous"):
        got = read_segmentation(path, combine_segments=True, chunks=100).compute()
    np.testing.assert_array_equal(got, expected)


def test_split_frames_without_offset_table_are_refused(tmp_path):
    original = highdicom_file(tmp_path, "FRACTIONAL", RLELossless, "TILED_FULL")
    path = rewrite_pixel_data(original, tmp_path / "rewritten.dcm", "2 fragments, no BOT")
    with pytest.raises(SegmentationInputError, match="Offset Table"):
        open_segmentation(path)


def test_truncated_native_pixel_data_is_refused(tmp_path):
    original = highdicom_file(tmp_path, "BINARY", ExplicitVRLittleEndian, "TILED_FULL")
    ds = pydicom.dcmread(original)
    ds.PixelData = ds.PixelData[: len(ds.PixelData) // 2]
    ds.save_as(tmp_path / "short.dcm")
    with pytest.raises(SegmentationInputError, match="truncated"):
        open_segmentation(tmp_path / "short.dcm")


@pytest.mark.parametrize("keyword", ["TotalPixelMatrixFocalPlanes", "NumberOfOpticalPaths"])
def test_several_focal_planes_or_optical_paths_are_refused(tmp_path, keyword):
    """Not read as if there were one (the frames of one plane taken for the whole)."""
    ds = pydicom.dcmread(highdicom_file(tmp_path, "BINARY", ExplicitVRLittleEndian,
                                        "TILED_FULL"))
    setattr(ds, keyword, 2)
    ds.save_as(tmp_path / "planes.dcm")
    with pytest.raises(SegmentationInputError, match=f"{keyword} is 2: daskseg reads SEGs of one"):
        open_segmentation(tmp_path / "planes.dcm")


def test_an_interruption_while_the_store_is_made_leaves_no_partial_store(tmp_path, monkeypatch):
    """Ctrl-C (or SIGTERM in the CLI) that came as zarr made the partial store left it, hidden
    beside the destination: its creation was outside the try that removes it."""
    import zarr

    source = make_slide(128, 128, tile_size=(64, 64))
    labels = np.zeros((128, 128), np.uint8)
    labels[10:80, 10:80] = 1
    path = write_segmentation(labels, source, make_segment_descriptions(1), tmp_path / "o.dcm")
    out = tmp_path / "out"
    out.mkdir()
    create_array = zarr.create_array

    def made_then_interrupted(*args, **kwargs):
        create_array(*args, **kwargs)
        raise KeyboardInterrupt

    monkeypatch.setattr(zarr, "create_array", made_then_interrupted)
    with pytest.raises(KeyboardInterrupt):
        open_segmentation(path).to_zarr(str(out / "labels.zarr"), combine_segments=True)
    assert list(out.iterdir()) == []


def _no_compute(*args, **kwargs):
    raise AssertionError("validation computed something")


@pytest.mark.parametrize("use_client", [False, True])
def test_a_failed_to_zarr_leaves_nothing(tmp_path, dask_client, use_client):
    """Overlapping segments cannot be combined: a daskseg error (and highdicom's RuntimeError)
    found while decoding, and no store, partial or not, is left."""
    source = make_slide(128, 128, tile_size=(64, 64))
    planes = np.zeros((128, 128, 2), bool)
    planes[10:80, 10:80, 0] = planes[40:120, 40:120, 1] = True
    path = write_segmentation(planes, source, make_segment_descriptions(2), tmp_path / "o.dcm",
                              client=dask_client)
    out = tmp_path / "out"
    out.mkdir()
    with pytest.raises(SegmentationInputError, match="overlap") as caught:
        open_segmentation(path).to_zarr(str(out / "labels.zarr"), combine_segments=True,
                                        client=dask_client if use_client else None)
    assert isinstance(caught.value, RuntimeError)
    assert list(out.iterdir()) == []
    stacked = open_segmentation(path).to_zarr(out / "planes.zarr", client=dask_client)
    assert stacked.store_path is not None and (out / "planes.zarr").is_dir()
    np.testing.assert_array_equal(stacked[:], planes)
    assert [p.name for p in out.iterdir()] == ["planes.zarr"]


@pytest.mark.parametrize("kwargs, message", [
    ({"segment_numbers": [9]}, "not in this SEG"),
    ({"segment_numbers": []}, "empty"),
    ({"combine_segments": True, "rescale_fractional": False}, "rescale_fractional=True"),
    ({"dtype": np.uint8}, "floating-point"),
    ({"dtype": "U4"}, "cannot hold"),
    ({"combine_segments": True, "dtype": bool}, "cannot hold"),
    # Stored fractions (up to MaximumFractionalValue) wrapped around in an int8, or became
    # True in a bool, without a word.
    ({"rescale_fractional": False, "dtype": np.int8}, "largest output value is .* int8"),
    ({"rescale_fractional": False, "dtype": bool}, "cannot hold"),
    ({"chunks": 0}, "each 1 or more"),
    ({"chunks": -5}, "each 1 or more"),
    ({"chunks": (512,)}, "two numbers"),
    ({"chunks": "auto"}, "not 'auto'"),
    ({"segment_numbers": 5}, "not int"),
])
def test_bad_options_are_refused_before_any_work(tmp_path, kwargs, message):
    path = highdicom_file(tmp_path, "FRACTIONAL", ExplicitVRLittleEndian, "TILED_FULL")
    with dask.config.set(scheduler=_no_compute), pytest.raises(
        (SegmentationInputError, SegmentationTypeError), match=message
    ):
        read_segmentation(path, **kwargs)


def test_labelmap_subset_reads_other_labels_as_background(tmp_path):
    # highdicom 0.28 keeps label 3 when only [1, 2] of [1, 2, 3] are asked for (it remaps only
    # when two or more segments are left out); daskseg reads what was asked for.
    path = highdicom_file(tmp_path, "LABELMAP", JPEGLSLossless, "TILED_FULL")
    everything = hd.seg.segread(path).get_total_pixel_matrix(combine_segments=True)
    with dask.config.set(scheduler="synchronous"):
        for numbers in ([1, 2], [3], [3, 1]):
            got = read_segmentation(path, combine_segments=True, segment_numbers=numbers).compute()
            np.testing.assert_array_equal(got, np.where(np.isin(everything, numbers), everything, 0))


def test_an_invalid_segment_description_fails_when_asked_for_not_at_open(tmp_path):
    """highdicom's checks of each segment (3-5 ms a segment) run when the descriptions are
    first asked for: the pixels read without them, and what needs them fails clearly, before
    writing anything."""
    from daskseg import segmentation_to_ome_zarr
    from daskseg.cli import main

    path = highdicom_file(tmp_path, "BINARY", ExplicitVRLittleEndian, "TILED_FULL")
    expected = hd.seg.segread(path).get_total_pixel_matrix()
    seg = pydicom.dcmread(path)
    del seg.SegmentSequence[1].SegmentedPropertyCategoryCodeSequence
    seg.save_as(path)
    reader = open_segmentation(path)
    with dask.config.set(scheduler="synchronous"):
        np.testing.assert_array_equal(reader.to_dask().compute(), expected)
        with pytest.raises(SegmentationFileError, match=f"{path}.*not a valid segment"):
            _ = reader.segment_descriptions
        with pytest.raises(SegmentationFileError, match="not a valid segment"):
            segmentation_to_ome_zarr(path, tmp_path / "seg.ome.zarr")
    assert not list(tmp_path.glob("*seg.ome.zarr*"))
    assert main(["info", str(path)]) == 1


def test_a_labelmap_label_between_its_segment_numbers_is_damage(tmp_path, thread_client):
    """A LABELMAP of segments 2, 5 and 9 whose frame holds 7: no segment describes it, so the
    file is damaged (it read as background before); segments 1..n need no such check, any
    label above n is refused already."""
    from daskseg import SegmentationFileError

    source = make_slide(64, 64, tile_size=(32, 32))
    labels = np.zeros((64, 64), np.uint8)
    labels[3:30, 5:60], labels[40:60, 10:30], labels[35:60, 40:62] = 2, 5, 9
    descriptions = make_segment_descriptions(3, segmentation_type="LABELMAP")
    for description, number in zip(descriptions, (2, 5, 9)):
        description.SegmentNumber = number
    path = write_segmentation(labels, source, descriptions, tmp_path / "seg.dcm",
                              segmentation_type="LABELMAP", client=thread_client)
    with dask.config.set(scheduler="synchronous"):
        np.testing.assert_array_equal(read_segmentation(path, combine_segments=True), labels)
        seg = pydicom.dcmread(path)
        pixels = bytearray(seg.PixelData)
        pixels[pixels.index(5)] = 7
        seg.PixelData = bytes(pixels)
        seg.save_as(path)
        for options in ({"combine_segments": True}, {}, {"segment_numbers": [2]}):
            with pytest.raises(SegmentationFileError, match="holds label 7, which no segment"):
                read_segmentation(path, **options).compute()


@pytest.mark.parametrize("transfer_syntax", [ExplicitVRLittleEndian, JPEGLSLossless])
@pytest.mark.parametrize("organization", ["TILED_SPARSE", "TILED_FULL"])
def test_labelmap_segment_zero_read_as_a_segment_equals_highdicom(tmp_path, transfer_syntax,
                                                                  organization):
    """A LABELMAP describing segment 0 without a PixelPaddingValue: segment 0 is a segment, and
    its plane is 1 in omitted and all-zero frames too, where every stored label is 0 (it was 0
    there)."""
    path = highdicom_file(tmp_path, "LABELMAP", transfer_syntax, organization, rows=200,
                          columns=170, tile=(32, 32))
    seg = pydicom.dcmread(path)
    assert seg.SegmentSequence[0].SegmentNumber == 0  # highdicom describes a background
    del seg.PixelPaddingValue
    seg.save_as(path)
    labels = hd.seg.segread(path).get_total_pixel_matrix(combine_segments=True)
    assert (labels == 0).any() and (labels != 0).any()
    with dask.config.set(scheduler="synchronous"):
        assert open_segmentation(path).segment_numbers == [0, 1, 2, 3]
        for numbers in ([0], [2, 0], [0, 1, 2, 3]):
            assert_same_as_highdicom(path, segment_numbers=numbers)


def test_tiled_full_frames_follow_segment_numbers_not_the_sequence_order(tmp_path):
    """PS3.3 C.7.6.17.3: TILED_FULL frames go by increasing segment number, as highdicom reads
    them, also when the SegmentSequence lists the segments in another order."""
    path = highdicom_file(tmp_path, "BINARY", ExplicitVRLittleEndian, "TILED_FULL")
    seg = pydicom.dcmread(path)
    seg.SegmentSequence = pydicom.Sequence(list(seg.SegmentSequence)[::-1])
    seg.save_as(path)
    expected = hd.seg.segread(path).get_total_pixel_matrix(segment_numbers=[1, 2, 3])
    with dask.config.set(scheduler="synchronous"):
        got = read_segmentation(path, segment_numbers=[1, 2, 3]).compute()
    np.testing.assert_array_equal(got, expected)


def test_one_segment_combined_reads_as_bool(tmp_path):
    """Its label is 1, which a bool holds: the read takes it (it raised numpy's TypeError from
    the tasks, past the check of the options)."""
    path = highdicom_file(tmp_path, "BINARY", ExplicitVRLittleEndian, "TILED_SPARSE")
    everything = hd.seg.segread(path).get_total_pixel_matrix(combine_segments=True)
    with dask.config.set(scheduler="synchronous"):
        for number, relabel in ((1, False), (2, True)):
            got = read_segmentation(path, combine_segments=True, dtype=bool, relabel=relabel,
                                    segment_numbers=[number]).compute()
            assert got.dtype == bool
            np.testing.assert_array_equal(got, everything == number)


def test_a_sliced_chunk_depends_only_on_its_frames(tmp_path):
    path = highdicom_file(tmp_path, "BINARY", ExplicitVRLittleEndian, "TILED_FULL", rows=512,
                          columns=512, tile=(64, 64))
    region = read_segmentation(path, chunks=128)[200:250, 300:380]
    needed = region.__dask_graph__().cull(set(flatten(region.__dask_keys__())))
    decode_tasks = [task for key, task in dict(needed).items() if "decode-seg" in str(key)]
    # The region lies in chunk row 1 (128..255) and chunk column 2 (256..383): one task,
    # which reads the 2 x 2 tiles of that chunk for each of the 3 segments and nothing else.
    assert len(decode_tasks) == 1
    frames = [arg for arg in decode_tasks[0] if isinstance(arg, list)][0]
    indices = sorted(f[0] for channel in frames for f in channel)
    expected = sorted(k * 64 + r * 8 + c for k in range(3) for r in (2, 3) for c in (4, 5))
    assert indices == expected


@pytest.mark.parametrize("segmentation_type, transfer_syntax, organization", [
    ("BINARY", JPEG2000Lossless, "TILED_SPARSE"),
    ("FRACTIONAL", RLELossless, "TILED_FULL"),
    ("LABELMAP", JPEGLSLossless, "TILED_SPARSE"),
])
def test_equals_highdicom_on_a_process_cluster(tmp_path, dask_client, segmentation_type,
                                               transfer_syntax, organization):
    path = highdicom_file(tmp_path, segmentation_type, transfer_syntax, organization)
    for kwargs in [{}, {"combine_segments": True}]:
        expected = hd.seg.segread(path).get_total_pixel_matrix(**kwargs)
        got = dask_client.compute(read_segmentation(path, chunks=64, **kwargs)).result()
        np.testing.assert_array_equal(got, expected)
        assert got.dtype == expected.dtype


def test_to_zarr_stacked_on_local_threads(tmp_path):
    path = highdicom_file(tmp_path, "FRACTIONAL", JPEGLSLossless, "TILED_SPARSE",
                          fractional_values=True)
    store = tmp_path / "stacked.zarr"
    open_segmentation(path).to_zarr(str(store), chunks=100)
    np.testing.assert_array_equal(
        zarr.open_array(str(store), mode="r")[:], hd.seg.segread(path).get_total_pixel_matrix()
    )
    with pytest.raises(DestinationExistsError, match="overwrite=True"):
        open_segmentation(path).to_zarr(str(store), chunks=100)
    zarr.open_array(str(store), mode="r+")[:] = 0
    open_segmentation(path).to_zarr(str(store), chunks=100, overwrite=True)
    np.testing.assert_array_equal(
        zarr.open_array(str(store), mode="r")[:], hd.seg.segread(path).get_total_pixel_matrix()
    )


@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    rows=st.integers(1, 40), columns=st.integers(1, 40), tile_rows=st.integers(1, 12),
    tile_columns=st.integers(1, 12), chunk=st.integers(1, 30),
    organization=st.sampled_from(["TILED_SPARSE", "TILED_FULL"]),
)
def test_random_geometries_of_native_binary(tmp_path_factory, rows, columns, tile_rows,
                                            tile_columns, chunk, organization):
    folder = tmp_path_factory.mktemp("geometry")
    path = highdicom_file(folder, "BINARY", ExplicitVRLittleEndian, organization, rows=rows,
                          columns=columns, tile=(tile_rows, tile_columns), n_segments=2)
    dataset = pydicom.dcmread(path)
    needed = -(-int(dataset.NumberOfFrames) * tile_rows * tile_columns // 8)
    with dask.config.set(scheduler="synchronous"):
        if len(dataset.PixelData) - needed >= 2:
            # highdicom 0.28 packs each frame of fewer than 8 pixels into a byte of its own,
            # not bit after bit (PS3.5 8.1.1): no pixel is where the standard puts it (two
            # such frames are one byte and a pad byte to daskseg, and to highdicom's reading).
            assert tile_rows * tile_columns < 8
            with pytest.raises(SegmentationFileError, match="in a byte of its own"):
                read_segmentation(path, chunks=chunk).compute()
            return
        got = read_segmentation(path, chunks=chunk).compute()
    np.testing.assert_array_equal(got, hd.seg.segread(path).get_total_pixel_matrix())


def test_to_numpy_from_workers_off_loopback_comes_packed_and_equal(tmp_path, monkeypatch,
                                                                   outward_host):
    from distributed import Client, LocalCluster

    import daskseg._tasks
    from daskseg._pack import PackedBlock

    host = outward_host
    path = highdicom_file(tmp_path, "BINARY", JPEG2000Lossless, "TILED_SPARSE", rows=640,
                          columns=640, tile=(64, 64))
    arrived = []

    def unpacked(block):
        arrived.append(isinstance(block, PackedBlock))
        return block.unpack() if isinstance(block, PackedBlock) else block

    monkeypatch.setattr(daskseg._tasks, "unpacked", unpacked)
    with LocalCluster(n_workers=1, threads_per_worker=1, host=host, dashboard_address=None,
                      memory_limit="2GiB") as cluster, Client(cluster) as client:
        got = open_segmentation(path).to_numpy(combine_segments=True, chunks=320, client=client)
    np.testing.assert_array_equal(
        got, hd.seg.segread(path).get_total_pixel_matrix(combine_segments=True)
    )
    assert arrived == [True] * 4  # four blocks of 100 KB, each of them compressible


def test_show_segmentation_draws_overlapping_and_fractional_segments(tmp_path, thread_client):
    """It combined the segments into labels, which overlapping BINARY segments (tissue with a
    tumour inside) and fractions cannot be: it raised CombineError."""
    matplotlib = pytest.importorskip("matplotlib")
    matplotlib.use("Agg")
    from daskseg import show_segmentation, write_segmentation
    from daskseg._colors import segment_rgb

    source = make_slide(128, 128, tile_size=(64, 64))
    planes = np.zeros((128, 128, 2), bool)
    planes[10:100, 10:100, 0] = True  # tissue
    planes[40:60, 40:60, 1] = True  # a tumour inside it
    descriptions = make_segment_descriptions(2)
    path = write_segmentation(planes, source, descriptions, tmp_path / "seg.dcm",
                              client=thread_client)
    picture = show_segmentation(path).images[-1].get_array()
    colors = segment_rgb(descriptions)
    np.testing.assert_allclose(picture[50, 50, :3], np.asarray(colors[2]) / 255, atol=1e-3)
    np.testing.assert_allclose(picture[20, 20, :3], np.asarray(colors[1]) / 255, atol=1e-3)
    assert picture[5, 5, 3] == 0 and picture[50, 50, 3] == 1

    fractions = planes.astype(np.float32) * 0.5
    path = write_segmentation(fractions, source,
                              make_segment_descriptions(2, segmentation_type="FRACTIONAL"),
                              tmp_path / "fractional.dcm", segmentation_type="FRACTIONAL",
                              client=thread_client)
    picture = show_segmentation(path).images[-1].get_array()
    assert picture[20, 20, 3] == pytest.approx(0.5, abs=0.01)
    assert picture[50, 50, 3] == pytest.approx(0.75, abs=0.01)  # one half over the other


def test_show_segmentation_of_a_region_decodes_only_its_frames(tmp_path, thread_client,
                                                               monkeypatch):
    """Its docstring's promise: a region of 16 tiles decoded the 256 frames of the reader's
    default chunk around it."""
    matplotlib = pytest.importorskip("matplotlib")
    matplotlib.use("Agg")
    import daskseg._decode
    from daskseg import show_segmentation, write_segmentation

    labels = np.random.default_rng(0).integers(0, 4, (1024, 1024), dtype=np.uint8)
    path = write_segmentation(
        labels, make_slide(1024, 1024, tile_size=(64, 64)),
        make_segment_descriptions(3, segmentation_type="LABELMAP"), tmp_path / "seg.dcm",
        segmentation_type="LABELMAP", client=thread_client)
    decoded = []
    decode = daskseg._decode.decode_frame
    monkeypatch.setattr(daskseg._decode, "decode_frame",
                        lambda layout, data, index: (decoded.append(index),
                                                     decode(layout, data, index))[1])
    with dask.config.set(scheduler="synchronous"):
        show_segmentation(path, region=((100, 300), (100, 300)))
    assert len(decoded) == 16  # tile rows 1..4 x tile columns 1..4


@pytest.mark.parametrize("region", [(0, 0, 10, 10), ((0, 10), (0, 10), (0, 3)), "0:10"])
def test_a_region_of_another_form_is_a_type_error(region):
    from daskseg import SegmentationTypeError
    from daskseg.render import _slices

    with pytest.raises(SegmentationTypeError, match=r"region is \(\(row_start, row_stop\)"):
        _slices(region, (100, 100))


@pytest.mark.parametrize("region", [((-10, 20), (0, 20)), (slice(0, 20), slice(-5, None))])
def test_a_region_before_row_or_column_0_is_refused(region):
    # Read as numpy's count from the end, it drew (or called empty) another place.
    from daskseg.render import _slices

    with pytest.raises(SegmentationInputError, match="before row or column 0"):
        _slices(region, (50, 50))
    assert _slices(((40, 80), (0, 20)), (50, 50)) == (slice(40, 50), slice(0, 20))



def test_only_frames_of_one_value_are_kept_decoded():
    """A short codestream of one value (an empty frame, one inside a segment) is decoded once
    per process and only its value kept; the pixels of other short codestreams are not kept,
    which held earlier SEGs' frames on every worker of a pipeline."""
    from daskseg._codecs import CODECS
    from daskseg._frames import FrameLayout

    layout = FrameLayout(JPEG2000Lossless, 64, 64, 8, 0)
    codec = CODECS[JPEG2000Lossless]
    uniform = codec.encode(np.full((64, 64), 3, np.uint8), 8)
    detailed = np.random.default_rng(0).integers(0, 4, (64, 64)).astype(np.uint8)
    varied = codec.encode(detailed, 8)
    assert len(uniform) < daskseg._decode._SMALL_CODESTREAM
    assert len(varied) < daskseg._decode._SMALL_CODESTREAM
    daskseg._decode._uniform_values.clear()
    first, nonzero = daskseg._decode._decode_small(layout, uniform)
    again, _ = daskseg._decode._decode_small(layout, uniform)
    assert nonzero and again is daskseg._decode._filled(layout, 3)
    np.testing.assert_array_equal(first, again)
    assert (again == 3).all() and again.dtype == np.uint8 and not again.flags.writeable
    array, _ = daskseg._decode._decode_small(layout, varied)
    np.testing.assert_array_equal(array, detailed)
    assert list(daskseg._decode._uniform_values) == [(layout, uniform)]


@pytest.mark.parametrize("option", ["combine_segments", "relabel", "rescale_fractional"])
def test_read_flags_given_as_other_values_are_refused(tmp_path, option):
    """combine_segments="no" combined the segments."""
    path = write_segmentation(np.eye(64, dtype=np.uint8), make_slide(64, 64, tile_size=(32, 32)),
                              make_segment_descriptions(1), tmp_path / "seg.dcm", client=None)
    with pytest.raises(SegmentationTypeError, match=f"{option} is True or False, not 'no'"):
        read_segmentation(path, **{option: "no"})


@pytest.mark.parametrize("kind", ["tiled", "series"])
def test_a_file_replaced_after_it_was_opened_is_not_read_at_the_old_places(tmp_path, kind,
                                                                          thread_client):
    """A reader keeps where the opened file's frames are. The path then held another SEG (a
    write with overwrite=True): its native frames were read at the old one's places, and the
    labels came back in tiles that neither file has, without a word."""
    from daskseg import SegmentationFileError
    from daskseg.synthetic import make_ct_series

    path = tmp_path / "seg.dcm"
    if kind == "tiled":
        source = make_slide(1024, 1024, tile_size=(256, 256))
        first, second = np.zeros((2, 1024, 1024), np.uint8)
        first[:256, :512], second[768:, 512:] = 1, 2
    else:
        source = make_ct_series(6, 32, 32)
        first, second = np.zeros((2, 6, 32, 32), np.uint8)
        first[:, :16], second[:, 16:] = 1, 2  # every slice has a frame
    descriptions = make_segment_descriptions(2, segmentation_type="LABELMAP")

    def write(mask):
        write_segmentation(mask, source, descriptions, path, segmentation_type="LABELMAP",
                           overwrite=True, client=thread_client)

    write(first)
    reader = open_segmentation(path)
    lazy = reader.to_dask(combine_segments=True)
    np.testing.assert_array_equal(reader.to_numpy(combine_segments=True), first)
    write(second)
    for read in (lambda: reader.to_numpy(combine_segments=True, client=thread_client),
                 lambda: thread_client.compute(lazy).result()):
        with pytest.raises(SegmentationFileError, match="not the file that was opened"):
            read()
    np.testing.assert_array_equal(open_segmentation(path).to_numpy(combine_segments=True),
                                  second)
    path.unlink()
    with pytest.raises(SegmentationFileError, match="no longer exists"):
        reader.to_numpy(combine_segments=True)


def test_a_one_tile_seg_with_its_position_in_the_shared_groups(tmp_path, thread_client):
    """A group the same for every frame may be shared (PS3.3 C.7.6.16): a SEG of one tile may
    have its Plane Position (Slide) there, as one-frame slides do; it was refused as damaged
    ("frame 1 has no valid position"), where highdicom reads it (a helper's hunt)."""
    labels = np.zeros((50, 45), np.uint8)
    labels[5:30, 10:40] = 1
    labels[35:48, 2:20] = 2
    path = daskseg.write_segmentation(
        labels, make_slide(50, 45, tile_size=(64, 64)),
        make_segment_descriptions(2, segmentation_type="LABELMAP"), tmp_path / "seg.dcm",
        segmentation_type="LABELMAP", dimension_organization_type="TILED_SPARSE",
        client=thread_client)
    dataset = pydicom.dcmread(path)
    (item,) = dataset.PerFrameFunctionalGroupsSequence
    dataset.SharedFunctionalGroupsSequence[0].PlanePositionSlideSequence = (
        item.PlanePositionSlideSequence)
    del item.PlanePositionSlideSequence
    dataset.save_as(tmp_path / "shared.dcm")
    ours = daskseg.read_segmentation(tmp_path / "shared.dcm", combine_segments=True).compute()
    theirs = hd.seg.segread(tmp_path / "shared.dcm").get_total_pixel_matrix(combine_segments=True)
    np.testing.assert_array_equal(ours, labels)
    np.testing.assert_array_equal(ours, theirs)


@pytest.mark.parametrize("syntax", [ExplicitVRLittleEndian, ImplicitVRLittleEndian])
@pytest.mark.parametrize("segmentation_type", ["BINARY", "LABELMAP"])
def test_a_sparse_seg_is_opened_from_its_raw_per_frame_items(tmp_path, thread_client, syntax,
                                                            segmentation_type):
    """Its per-frame items are walked raw, not made into pydicom Datasets (20,480 frames took
    5.7 s): the same frame table as from pydicom's items, the same pixels as highdicom's.
    31-pixel tiles put frames at position 32, an SL whose bytes (20 00 00 00) are padding
    characters if taken for text."""
    from daskseg._frames import index_frames

    source = make_slide(100, 130, tile_size=(31, 31))
    labels = make_tissue_mask(100, 130, 3, chunks=50).compute()
    path = write_segmentation(labels, source, make_segment_descriptions(
        3, segmentation_type=segmentation_type), tmp_path / "seg.dcm", client=thread_client,
        segmentation_type=segmentation_type, transfer_syntax_uid=syntax,
        dimension_organization_type="TILED_SPARSE")
    reader = open_segmentation(path)
    assert "PerFrameFunctionalGroupsSequence" not in reader.header
    full = pydicom.dcmread(path)
    np.testing.assert_array_equal(
        reader._frame_table, index_frames(full, reader.segment_numbers, reader._grid))
    assert (reader._frame_table >= 0).sum() == int(full.NumberOfFrames)
    np.testing.assert_array_equal(
        reader.to_numpy(combine_segments=True),
        hd.seg.segread(path).get_total_pixel_matrix(combine_segments=True))


def test_a_frames_own_damaged_position_is_refused_not_replaced_by_the_shared_one(
        tmp_path, thread_client):
    """A frame's own Plane Position (Slide) without a valid row is damaged: refused as pydicom's
    reading refused it, not placed at a position the shared groups hold for another reason."""
    from daskseg import SegmentationFileError

    source = make_slide(100, 130, tile_size=(31, 31))
    labels = make_tissue_mask(100, 130, 2, chunks=50).compute()
    path = write_segmentation(labels, source, make_segment_descriptions(2), tmp_path / "seg.dcm",
                              client=thread_client, dimension_organization_type="TILED_SPARSE")
    ds = pydicom.dcmread(path)
    shared = ds.SharedFunctionalGroupsSequence[0]
    shared.PlanePositionSlideSequence = ds.PerFrameFunctionalGroupsSequence[
        0].PlanePositionSlideSequence
    del ds.PerFrameFunctionalGroupsSequence[2].PlanePositionSlideSequence[
        0].RowPositionInTotalImagePixelMatrix
    ds.save_as(tmp_path / "damaged.dcm")
    with pytest.raises(SegmentationFileError, match="frame 3 has no valid position"):
        open_segmentation(tmp_path / "damaged.dcm")


@pytest.fixture
def small_disk(tmp_path):
    """A folder on a tmpfs of 64 KiB (root only: skipped where it cannot be mounted)."""
    import os
    import subprocess

    folder = tmp_path / "full"
    folder.mkdir()
    if os.geteuid() != 0 or subprocess.run(
            ["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(folder)],
            capture_output=True).returncode != 0:
        pytest.skip("a small tmpfs cannot be mounted here")
    try:
        yield folder
    finally:
        import gc

        gc.collect()  # an exception's traceback holds nibabel's file, removed but open
        subprocess.run(["umount", str(folder)], check=True)


def test_a_full_disk_names_the_readers_output_and_leaves_nothing(tmp_path, small_disk):
    """ENOSPC as a reader writes Zarr, OME-Zarr or NIfTI named neither the output nor its
    folder ('[Errno 28] No space left on device'); the writer's said what and where (of a
    pyramid's level, its hidden temporary name)."""
    import errno

    from daskseg import segmentation_to_ome_zarr, write_segmentation_pyramid
    from daskseg.synthetic import make_ct_series, make_label_volume

    rng = np.random.default_rng(0)
    labels = rng.integers(0, 3, (512, 512), dtype=np.uint8)  # incompressible: 256 KiB
    seg = write_segmentation(labels, make_slide(512, 512, tile_size=(128, 128)),
                             make_segment_descriptions(2), tmp_path / "seg.dcm",
                             segmentation_type="LABELMAP")
    volume = write_segmentation(make_label_volume(8, 128, 128, 2),
                                make_ct_series(8, 128, 128), make_segment_descriptions(2),
                                tmp_path / "volume.dcm")
    for what, write in [
        ("the Zarr store a.zarr",
         lambda: open_segmentation(seg).to_zarr(small_disk / "a.zarr", combine_segments=True)),
        ("the OME-Zarr store b.ome.zarr",
         lambda: segmentation_to_ome_zarr(seg, small_disk / "b.ome.zarr")),
        ("the NIfTI file c.nii",
         lambda: open_segmentation(volume).to_nifti(small_disk / "c.nii")),
        # A pyramid's level is written under a hidden name, which the message named.
        (r"the pyramid's level-0.dcm \(its frames are spooled beside it, then assembled "
         r"there\)", lambda: write_segmentation_pyramid(
             labels, make_slide(512, 512, tile_size=(128, 128)), make_segment_descriptions(2),
             small_disk, segmentation_type="LABELMAP", downsample_factors=[2])),
    ]:
        with pytest.raises(OSError, match=f"no room to write {what}; free space") as caught:
            write()
        assert caught.value.errno == errno.ENOSPC
        assert caught.value.filename == str(small_disk)
        assert list(small_disk.iterdir()) == []
        # While the exception lives (a notebook keeps the last), no removed file holds the
        # room it asks to free: nibabel's file, open in its frames, did.
        held = []
        for fd in os.listdir("/proc/self/fd"):
            with contextlib.suppress(OSError):
                if os.readlink(f"/proc/self/fd/{fd}").startswith(str(small_disk)):
                    held.append(os.readlink(f"/proc/self/fd/{fd}"))
        assert held == [], what
        del caught


def test_a_block_is_not_written_into_a_zarr_store_removed_meanwhile(tmp_path):
    """A task that runs on after its write was given up (a cluster restarted under to_zarr:
    the scheduler forgot it, its worker finished it) made the removed partial store again,
    1-3 s after the error. It writes nothing into a local store whose folder is gone."""
    import shutil

    from daskseg._decode import store_block

    partial = tmp_path / ".labels.zarr.partial"
    target = zarr.create_array(str(partial), shape=(4, 4), chunks=(2, 2), dtype=np.uint8)
    info = {0: {"array-location": [(0, 2), (0, 2)]}}
    store_block(np.ones((2, 2), np.uint8), target, block_info=info)
    assert zarr.open_array(str(partial))[:2, :2].tolist() == [[1, 1], [1, 1]]
    shutil.rmtree(partial)
    with pytest.raises(FileNotFoundError, match="removed meanwhile"):
        store_block(np.ones((2, 2), np.uint8), target, block_info=info)
    assert list(tmp_path.iterdir()) == []


def test_default_chunks_of_many_segments_stay_within_the_chunk_bytes(tmp_path):
    """The default chunks were 2048 x 2048 pixels whatever the number of segments, all in
    one chunk: 255 fractional segments made chunks of 4 GiB, and an 8 MB SEG killed 3 GiB
    workers. By default a chunk holds at most 32 MiB of output (a tile at least)."""
    rng = np.random.default_rng(3)
    fractions = rng.random((512, 512, 64), dtype=np.float32)
    fractions[fractions < 0.6] = 0
    seg = write_segmentation(fractions, make_slide(512, 512, tile_size=(128, 128)),
                             make_segment_descriptions(64, segmentation_type="FRACTIONAL"),
                             tmp_path / "seg.dcm", segmentation_type="FRACTIONAL")
    lazy = read_segmentation(seg)
    assert lazy.dtype == np.float32 and lazy.shape == (512, 512, 64)
    assert lazy.chunks[0][0] * lazy.chunks[1][0] * 64 * 4 <= 32 * 2**20 < lazy.nbytes
    assert lazy.chunks[0][0] % 128 == 0 and lazy.chunks[1][0] % 128 == 0  # whole tiles
    np.testing.assert_allclose(lazy.compute(), np.round(fractions * 255) / 255, atol=1e-6)
    assert read_segmentation(seg, combine_segments=False, segment_numbers=[1]).chunks[0] == \
        (512,)  # one segment: 2048 x 2048 as before (the whole slide here)
