"""read_segmentation / open_segmentation against highdicom's get_total_pixel_matrix."""

from __future__ import annotations

import dask
import dask.array as da
import highdicom as hd
import numpy as np
import pydicom
import pytest
import zarr
from pydicom.uid import (
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    JPEG2000Lossless,
    JPEGLSLossless,
    RLELossless,
)

import daskseg.read
from daskseg import SegmentationInputError, open_segmentation, read_segmentation, write_segmentation
from daskseg.synthetic import make_segment_descriptions, make_slide, make_tissue_mask

MATRIX = [
    ("BINARY", ExplicitVRLittleEndian),
    ("BINARY", ImplicitVRLittleEndian),
    ("BINARY", JPEG2000Lossless),
    ("FRACTIONAL", ExplicitVRLittleEndian),
    ("FRACTIONAL", JPEG2000Lossless),
    ("FRACTIONAL", JPEGLSLossless),
    ("FRACTIONAL", RLELossless),
    ("LABELMAP", ExplicitVRLittleEndian),
    ("LABELMAP", JPEG2000Lossless),
    ("LABELMAP", JPEGLSLossless),
    ("LABELMAP", RLELossless),
]


def highdicom_file(folder, segmentation_type, transfer_syntax, organization, *, rows=230,
                   columns=170, tile=(64, 48), n_segments=3, fractional_values=False, name="seg"):
    """A SEG written by highdicom, with edge tiles and, for TILED_SPARSE, omitted frames."""
    source = make_slide(rows, columns, tile_size=tile)
    stacked = segmentation_type == "FRACTIONAL"
    mask = make_tissue_mask(rows, columns, n_segments, chunks=64, stacked=stacked).compute()
    if fractional_values:
        mask = mask * np.linspace(0.2, 1.0, columns, dtype=np.float32)[None, :, None]
    seg = hd.seg.Segmentation(
        [source], mask[None], segmentation_type,
        make_segment_descriptions(n_segments, segmentation_type=segmentation_type),
        hd.UID(), 1, hd.UID(), 1, "m", "m", "1", "1", transfer_syntax_uid=transfer_syntax,
        tile_pixel_array=True, dimension_organization_type=organization,
        omit_empty_frames=organization == "TILED_SPARSE",
    )
    path = folder / f"{name}.dcm"
    seg.save_as(path)
    return path


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
    numbers = open_segmentation(path).segment_numbers
    with dask.config.set(scheduler="synchronous"):
        for kwargs in variants(numbers):
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


def test_untiled_seg_is_refused(testdata):
    with pytest.raises(SegmentationInputError, match="tiled"):
        read_segmentation(testdata / "seg_image_ct_binary.dcm")


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
    original = daskseg.read._frame

    def counting(codec, handle, frame):
        decoded.append(frame[0])
        return original(codec, handle, frame)

    monkeypatch.setattr(daskseg.read, "_frame", counting)
    array = read_segmentation(path, combine_segments=True, chunks=64)
    region = array[130:190, 70:120]  # tile rows 2..2, tile columns 1..1
    with dask.config.set(scheduler="synchronous"):
        got = region.compute()
    expected = hd.seg.segread(path).get_total_pixel_matrix(combine_segments=True)[130:190, 70:120]
    np.testing.assert_array_equal(got, expected)
    # One tile, three segments: three frames decoded, of 3 x 64 in the file.
    assert sorted(decoded) == [k * 64 + 2 * 8 + 1 for k in range(3)]


def test_round_trip_of_daskseg_writer(tmp_path, dask_client):
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


def test_fsspec_urls(tmp_path):
    fsspec = pytest.importorskip("fsspec")
    path = highdicom_file(tmp_path, "FRACTIONAL", RLELossless, "TILED_SPARSE")
    memory = fsspec.filesystem("memory")
    memory.pipe("/seg.dcm", path.read_bytes())
    with dask.config.set(scheduler="synchronous"):
        got = read_segmentation("memory://seg.dcm").compute()
        expected = hd.seg.segread(path).get_total_pixel_matrix()
    np.testing.assert_array_equal(got, expected)


def test_lazy_array_is_a_dask_array(tmp_path):
    path = highdicom_file(tmp_path, "BINARY", ExplicitVRLittleEndian, "TILED_FULL")
    array = read_segmentation(path, chunks=100)
    assert isinstance(array, da.Array)
    assert array.shape == (230, 170, 3)
    # Whole tiles per chunk (the last may end in a partial tile).
    assert array.chunks[:2] == ((128, 102), (96, 74))
