"""Bad input: a clear ValueError or TypeError, before any work reaches the cluster, nothing written."""

from __future__ import annotations

import os

import dask.array as da
import numpy as np
import pydicom
import pytest
import zarr

from daskseg import (
    DestinationExistsError,
    SegmentationInputError,
    SegmentationTypeError,
    write_segmentation,
)
from daskseg.synthetic import make_segment_descriptions, make_slide

ROWS, COLUMNS, TILE = 96, 128, 32


def _explode(block):
    raise AssertionError("the mask was computed before the input was checked")


def untouchable(shape, dtype=np.uint8):
    """A lazy mask whose blocks fail if anything computes them (xarray's raise_if_dask_computes)."""
    return da.zeros(shape, dtype=dtype, chunks=32).map_blocks(_explode, dtype=dtype)


@pytest.fixture
def source():
    return make_slide(ROWS, COLUMNS, tile_size=(TILE, TILE))


def check_refused(tmp_path, error_type, match, mask, source, descriptions=None, path=None,
                  **options):
    with pytest.raises(error_type, match=match):
        write_segmentation(
            mask, source, make_segment_descriptions(2) if descriptions is None else descriptions,
            path or tmp_path / "seg.dcm", **options,
        )
    assert os.listdir(tmp_path) == []


UPFRONT = [
    ("shape", SegmentationInputError, r"shape \(96, 100\).*96 x 128",
     dict(mask=(96, 100))),
    # (segments, rows, columns), as PyTorch models give: was "stacks 128 segment planes".
    ("segments first", SegmentationInputError, r"segment planes first.*np\.moveaxis\(mask, 0, -1\)",
     dict(mask=(2, 96, 128))),
    ("stack of another size", SegmentationInputError,
     r"\(96, 100, 3\).*neither the source's total pixel matrix \(96, 128\).*\(96, 128, 2\)",
     dict(mask=(96, 100, 3))),
    ("dimensions", SegmentationInputError, r"4 dimensions",
     dict(mask=(2, 96, 128, 2))),
    ("stack depth", SegmentationInputError, r"stacks 3 segment planes.*2 segments",
     dict(mask=(96, 128, 3))),
    ("unknown type", SegmentationInputError, r"Unknown segmentation_type 'BINARYISH'",
     dict(segmentation_type="binaryish")),
    ("lossy JPEG", SegmentationInputError, r"1.2.840.10008.1.2.4.50.*lossy",
     dict(transfer_syntax_uid="1.2.840.10008.1.2.4.50")),
    ("lossy JPEG 2000", SegmentationInputError, r"1.2.840.10008.1.2.4.91.*lossy",
     dict(transfer_syntax_uid="1.2.840.10008.1.2.4.91")),
    ("RLE for BINARY", SegmentationInputError, r"RLE Lossless.*not allowed for a BINARY",
     dict(transfer_syntax_uid="1.2.840.10008.1.2.5")),
    ("tile size zero", SegmentationInputError, r"tile_size must be positive",
     dict(tile_size=(0, 32))),
    ("tile size negative", SegmentationInputError, r"tile_size must be positive",
     dict(tile_size=-4)),
    # Rows and Columns are US (pydicom failed as it wrote the file), and frames beyond what
    # daskseg's reader reads were written, then refused by it as damaged.
    ("tile size beyond US", SegmentationInputError, r"tile_size 65536 x 64 is too large",
     dict(tile_size=(65536, 64))),
    ("tile size beyond the reader", SegmentationInputError, r"8200 x 8200 is too large",
     dict(tile_size=8200)),
    # Type 1: empty was taken as not given (daskseg's version written); highdicom writes it so.
    ("empty software versions", SegmentationInputError, r"software_versions '' is empty",
     dict(software_versions="")),
    ("no software versions", SegmentationInputError, r"software_versions \(\) is empty",
     dict(software_versions=())),
    ("software versions a number", SegmentationTypeError, r"software_versions is a text",
     dict(software_versions=3)),
    ("software versions as bytes", SegmentationTypeError, r"software_versions is a text",
     dict(software_versions=b"1.0")),
    # Checked as the other UIDs (it was written with pydicom's warning).
    ("invalid pyramid UID", SegmentationInputError, r"pyramid_uid '1.2.abc' is not a valid UID",
     dict(pyramid_uid="1.2.abc")),
    ("destination as bytes", SegmentationTypeError, r"destination is a file's path, as a str",
     dict(path=b"seg.dcm")),
    ("small JPEG 2000 tiles", SegmentationInputError, r"32 x 32",
     dict(tile_size=16, transfer_syntax_uid="1.2.840.10008.1.2.4.90")),
    ("TILED_FULL omitting frames", SegmentationInputError, r"omit_empty_frames must be False",
     dict(dimension_organization_type="TILED_FULL", omit_empty_frames=True)),
    ("organization", SegmentationInputError, r"TILED_SPARSE' or 'TILED_FULL",
     dict(dimension_organization_type="3D")),
    ("float label image", SegmentationTypeError, r"floating point without a segment axis",
     dict(mask=(96, 128), dtype=np.float32)),
    ("max fractional value", SegmentationInputError, r"max_fractional_value must be in 1..255",
     dict(segmentation_type="FRACTIONAL", max_fractional_value=300)),
    # These three were refused by the header's thread, beside the first blocks' encoding.
    ("attribute of the frames", SegmentationInputError,
     r"ImagePositionPatient is not an attribute of a SEG's header.*functional groups",
     dict(header_attributes={"ImagePositionPatient": [0, 0, 0]})),
    ("attribute of no SEG module", SegmentationInputError,
     r"SliceThickness is not an attribute of a SEG's header",
     dict(header_attributes={"SliceThickness": 9})),
    ("attribute of a module the writer makes", SegmentationInputError,
     r"the writer makes the Microscope Slide Layer Tile Organization module",
     dict(header_attributes={"TotalPixelMatrixFocalPlanes": 2})),
]


@pytest.mark.parametrize("name, error_type, match, case", UPFRONT, ids=[c[0] for c in UPFRONT])
def test_refused_before_any_work(tmp_path, source, thread_client, name, error_type, match, case):
    case = dict(case)
    shape = case.pop("mask", (ROWS, COLUMNS))
    dtype = case.pop("dtype", np.uint8)
    check_refused(tmp_path, error_type, match, untouchable(shape, dtype), source, client=thread_client,
                  **case)


def test_segment_descriptions_checked(tmp_path, source, thread_client):
    mask = untouchable((ROWS, COLUMNS))
    check_refused(tmp_path, SegmentationInputError, "No segment descriptions", mask, source,
                  descriptions=[], client=thread_client)
    shuffled = make_segment_descriptions(3)
    shuffled[1].SegmentNumber = 3
    shuffled[2].SegmentNumber = 2
    check_refused(tmp_path, SegmentationInputError, r"must run 1..3 in order, got \[1, 3, 2\]",
                  mask, source, descriptions=shuffled, client=thread_client)
    check_refused(tmp_path, SegmentationTypeError, "SegmentDescription", mask, source,
                  descriptions=["tumor"], client=thread_client)


def test_source_checked(tmp_path, thread_client, testdata):
    mask = untouchable((ROWS, COLUMNS))
    # A CT image is a volume of one slice: the mask must have its size.
    check_refused(tmp_path, SegmentationInputError, r"the source has 1 frames of 128 x 128", mask,
                  testdata / "ct_image.dcm", client=thread_client)
    # A slide without its total pixel matrix size is no tiled image for highdicom, and no
    # multi-frame image with geometry either: its missing attribute is named.
    not_tiled = make_slide(ROWS, COLUMNS, tile_size=(TILE, TILE))
    del not_tiled.TotalPixelMatrixRows
    check_refused(tmp_path, SegmentationInputError, "tiled image without TotalPixelMatrixRows",
                  mask, not_tiled, client=thread_client)
    check_refused(tmp_path, SegmentationInputError, "does not exist", mask,
                  tmp_path / "missing.dcm", client=thread_client)
    check_refused(tmp_path, SegmentationTypeError, "pydicom Dataset or the path", mask, 42,
                  client=thread_client)
    # An empty list was told it should be a Dataset (not list), bytes that it held an int.
    check_refused(tmp_path, SegmentationInputError, "source_images is empty", mask, [],
                  client=thread_client)
    check_refused(tmp_path, SegmentationTypeError, "not bytes .*decode it to a str", mask,
                  b"slide.dcm", client=thread_client)


def test_destination_checked(tmp_path, source, thread_client):
    mask = untouchable((ROWS, COLUMNS))
    check_refused(tmp_path, SegmentationInputError, "folder .* does not exist", mask, source,
                  path=tmp_path / "missing" / "seg.dcm", client=thread_client)
    existing = tmp_path / "seg.dcm"
    existing.write_bytes(b"keep")
    with pytest.raises(DestinationExistsError, match="overwrite=True"):
        write_segmentation(mask, source, make_segment_descriptions(2), existing, client=thread_client)
    assert existing.read_bytes() == b"keep" and os.listdir(tmp_path) == ["seg.dcm"]
    assert issubclass(DestinationExistsError, FileExistsError)


def test_zarr_paths_checked(tmp_path, source, thread_client):
    out = tmp_path / "out"
    out.mkdir()
    group = zarr.open_group(str(tmp_path / "prediction.zarr"), mode="w")
    group.create_array("labels", shape=(ROWS, COLUMNS), dtype="uint8")
    with pytest.raises(SegmentationInputError, match="Zarr group; give the path of one of its "
                                                     "arrays: labels"):
        write_segmentation(tmp_path / "prediction.zarr", source, make_segment_descriptions(2),
                           out / "seg.dcm", client=thread_client)
    with pytest.raises(SegmentationInputError, match="missing.zarr"):
        write_segmentation(tmp_path / "missing.zarr", source, make_segment_descriptions(2),
                           out / "seg.dcm", client=thread_client)
    assert os.listdir(out) == []


def test_mask_type_checked(tmp_path, source, thread_client):
    check_refused(tmp_path, SegmentationTypeError, "mask must be a dask array", [[0, 1]], source,
                  client=thread_client)
    check_refused(tmp_path, SegmentationTypeError, "dtype", untouchable((ROWS, COLUMNS), "U1"),
                  source, client=thread_client)


def planted(value, dtype, shape=(ROWS, COLUMNS), where=(70, 100)):
    mask = np.zeros(shape, dtype=dtype)
    mask[where] = value
    return da.from_array(mask, chunks=40)


VALUES = [
    ("label above segments", "BINARY", planted(3, np.uint8), r"label 3.*only 2 segments"),
    ("negative label", "BINARY", planted(-1, np.int16), r"negative values \(as low as -1\)"),
    ("NaN fraction", "FRACTIONAL", planted(np.nan, np.float32, (ROWS, COLUMNS, 2)), "NaN"),
    ("infinite fraction", "FRACTIONAL", planted(np.inf, np.float64, (ROWS, COLUMNS, 2)),
     "infinite"),
    ("fraction above 1", "FRACTIONAL", planted(1.5, np.float32, (ROWS, COLUMNS, 2)),
     r"\[0, 1\].*1.5"),
    ("fraction below 0", "FRACTIONAL", planted(-0.25, np.float32, (ROWS, COLUMNS, 2)),
     r"\[0, 1\].*-0.25"),
    ("fraction in a BINARY stack", "BINARY", planted(0.5, np.float32, (ROWS, COLUMNS, 2)),
     "FRACTIONAL"),
    ("stored fraction above maximum", "FRACTIONAL", planted(200, np.uint8, (ROWS, COLUMNS, 2)),
     r"0..max_fractional_value \(100\).*200"),
    ("BINARY stack above 1", "BINARY", planted(2, np.uint8, (ROWS, COLUMNS, 2)), "only 0 and 1"),
    ("overlap in a LABELMAP", "LABELMAP", planted(1, np.uint8, (ROWS, COLUMNS, 2), (5, 5)),
     None),
]


@pytest.mark.parametrize("name, segmentation_type, mask, match", VALUES, ids=[v[0] for v in VALUES])
def test_values_checked_in_block_tasks(tmp_path, source, thread_client, name, segmentation_type, mask,
                                       match):
    """Checks that need every value run in the blocks, and abort the write cleanly."""
    options = {"max_fractional_value": 100} if "maximum" in name else {}
    if name == "overlap in a LABELMAP":
        both = np.zeros((ROWS, COLUMNS, 2), np.uint8)
        both[5, 5] = 1  # the pixel is in both segments
        mask, match = da.from_array(both, chunks=40), "overlap"
    check_refused(tmp_path, SegmentationInputError, match, mask, source,
                  segmentation_type=segmentation_type, client=thread_client, **options)
    # The message names where the bad value is, when the check is about a value: the pixel
    # in a label image (found from the tiles' ranges), the block's rows otherwise.
    if name.startswith(("label", "negative", "fraction", "stored", "BINARY")):
        labels = name in ("label above segments", "negative label")
        where = "at row 70, column 100" if labels else "rows 64..95"
        with pytest.raises(SegmentationInputError, match=where):
            write_segmentation(mask, source, make_segment_descriptions(2), tmp_path / "x.dcm",
                               segmentation_type=segmentation_type, client=thread_client, **options)


def test_good_input_after_bad_leaves_a_readable_file(tmp_path, source, thread_client):
    mask = np.zeros((ROWS, COLUMNS), np.uint8)
    mask[10:40, 20:90] = 2
    path = write_segmentation(mask, source, make_segment_descriptions(2), tmp_path / "ok.dcm",
                              client=thread_client)
    assert os.listdir(tmp_path) == ["ok.dcm"]
    assert int(pydicom.dcmread(path).NumberOfFrames) == 6  # segment 2 in 2 x 3 tiles
