"""The writer's input rules: pure checks, no cluster."""

from __future__ import annotations

import dask.array as da
import highdicom as hd
import numpy as np
import pytest
from pydicom.uid import JPEG2000Lossless

from daskseg import DestinationExistsError, SegmentationInputError, SegmentationTypeError
from daskseg._inputs import (
    as_dask_array,
    check_destination,
    check_numbers,
    check_uids,
    drop_leading_axis,
    in_blocks,
    parse_options,
    tile_size,
)
from daskseg._spool import Spool
from daskseg.synthetic import make_slide


def test_highdicom_enums_are_accepted():
    options = parse_options(hd.seg.SegmentationTypeValues.FRACTIONAL, JPEG2000Lossless,
                            hd.DimensionOrganizationTypeValues.TILED_FULL, None, 200, None)
    assert options.segmentation_type == "FRACTIONAL"
    assert options.dimension_organization_type == "TILED_FULL" and options.tiled_full
    assert options.omit_empty_frames is False


def test_options_are_frozen():
    options = parse_options("binary", JPEG2000Lossless, "tiled_sparse", None, 255, None)
    assert options.omit_empty_frames is True
    with pytest.raises(AttributeError):
        options.segmentation_type = "LABELMAP"


@pytest.mark.parametrize("args, message", [
    (("OTHER", JPEG2000Lossless, "TILED_SPARSE", None, 255), "Unknown segmentation_type"),
    (("BINARY", "1.2.840.10008.1.2.4.50", "TILED_SPARSE", None, 255), "lossy"),
    (("BINARY", JPEG2000Lossless, "TILED_DIAGONAL", None, 255), "dimension_organization_type"),
    (("BINARY", JPEG2000Lossless, "TILED_FULL", True, 255), "omit_empty_frames"),
    (("FRACTIONAL", JPEG2000Lossless, "TILED_SPARSE", None, 300), "max_fractional_value"),
    # A name, not a UID: said so, not "JPEG 2000 is not allowed" beside JPEG 2000 allowed.
    (("BINARY", "jpeg2000", "TILED_SPARSE", None, 255), "'jpeg2000' is not a UID. Allowed"),
])
def test_bad_options_are_refused(args, message):
    with pytest.raises(SegmentationInputError, match=message):
        parse_options(*args, None)


@pytest.mark.parametrize("shape, expected, kept", [
    ((1, 96, 128), (96, 128), (96, 128)),  # a label image with a leading axis
    ((1, 128, 2), (1, 128), (1, 128, 2)),  # a stack of one row
    ((1, 96, 128, 2), (96, 128), (96, 128, 2)),
    ((96, 128), (96, 128), (96, 128)),
])
def test_the_leading_axis_rule(shape, expected, kept):
    assert drop_leading_axis(da.zeros(shape), 2, expected).shape == kept


def test_mask_kinds_and_refusal():
    assert isinstance(as_dask_array(np.zeros((4, 4))), da.Array)
    with pytest.raises(SegmentationTypeError, match="mask must be"):
        as_dask_array([[0, 1]])
    # Rows picked by a boolean array: chunk sizes unknown, shape (nan, 4) (said to differ
    # from the source's shape before).
    picked = da.zeros((6, 4), chunks=3)[da.from_array(np.ones(6, bool), chunks=3)]
    with pytest.raises(SegmentationInputError, match="compute_chunk_sizes"):
        as_dask_array(picked)


def test_tile_size_defaults_to_the_source_frames():
    source = make_slide(256, 256, tile_size=(64, 32))
    assert tile_size(None, source) == (64, 32)
    assert tile_size(16, source) == (16, 16)
    with pytest.raises(SegmentationInputError, match="positive"):
        tile_size((0, 4), source)
    assert tile_size(np.array([32, 48]), source) == (32, 48)
    assert tile_size((np.int64(8), 24), source) == (8, 24)
    # A string was taken as its characters ("64" as 6 x 4) and True as 1, as highdicom does not.
    for bad in ("64", True, (64.0, 64), (True, 4), [64], (1, 2, 3)):
        with pytest.raises(SegmentationTypeError, match="two integers"):
            tile_size(bad, source)


def test_detailed_mask_has_detail_in_every_tile_whatever_the_chunks():
    from daskseg.synthetic import make_detailed_mask

    mask = make_detailed_mask(256, 320, 5, chunks=(100, 77)).compute()
    np.testing.assert_array_equal(mask, make_detailed_mask(256, 320, 5, chunks=256).compute())
    tiles = mask.reshape(4, 64, 5, 64).swapaxes(1, 2)
    assert all(len(np.unique(tile)) > 2 for row in tiles for tile in row)
    assert mask.max() == 5 and (mask[:16, :16] == mask[0, 0]).all()


def test_a_zarr_mask_is_read_in_the_writers_blocks(tmp_path):
    """A Zarr array or path is read one block at a time (one task a block, not one a chunk and
    another joining them); a view of it that is reversed or cut is rechunked as before."""
    import zarr

    path = tmp_path / "mask.zarr"
    values = np.arange(96 * 80, dtype=np.uint16).reshape(96, 80)
    zarr.create_array(str(path), shape=values.shape, chunks=(16, 16), dtype="uint16")[:] = values
    blocks = ((48, 48), (64, 16))
    for mask in (str(path), path, zarr.open_array(str(path), mode="r")):
        array = as_dask_array(mask)
        read = in_blocks(mask, array, blocks)
        assert read.chunks == blocks
        assert len(dict(read.__dask_graph__())) == 4 + 1  # the blocks and the array itself
        np.testing.assert_array_equal(read.compute(scheduler="sync"), values)
        for view, expected in ((array[::-1], values[::-1]), (array[:, :64], values[:, :64])):
            chunks = (blocks[0], (64,) if view.shape[1] == 64 else blocks[1])
            other = in_blocks(mask, view, chunks)
            assert other.chunks == chunks
            assert len(dict(other.__dask_graph__())) > 4 + 1  # rechunked: chunk reads kept
            np.testing.assert_array_equal(other.compute(scheduler="sync"), expected)
    # Neither Zarr nor a path: rechunked.
    plain = da.from_array(values, chunks=16)
    assert in_blocks(values, plain, blocks).chunks == blocks


def test_destinations_refused_before_any_work(tmp_path):
    # A link to nowhere is a file that the SEG would replace: it was refused only after all the
    # work ("appeared while writing").
    link = tmp_path / "link.dcm"
    link.symlink_to(tmp_path / "nowhere.dcm")
    with pytest.raises(DestinationExistsError, match="exists; pass overwrite=True"):
        check_destination(link, overwrite=False)
    assert check_destination(link, overwrite=True) == link
    # The temporary files beside it have longer names: refused by name, not by an OSError
    # naming a file the user never gave.
    with pytest.raises(SegmentationInputError, match="bytes long"):
        check_destination(tmp_path / ("x" * 241 + ".dcm"), overwrite=False)
    assert check_destination(tmp_path / ("x" * 160 + ".dcm"), overwrite=False).parent == tmp_path


def test_a_folder_that_refuses_new_files_is_an_input_error():
    import os
    import pathlib
    import tempfile

    folder = pathlib.Path("/sys")
    try:
        os.close(tempfile.mkstemp(dir=folder)[0])
    except OSError:
        pass
    else:
        pytest.skip("/sys takes new files here")
    with pytest.raises(SegmentationInputError, match="Cannot create a file in the destination"):
        Spool(folder, "seg.dcm", (1, 1, 1)).open()


@pytest.mark.parametrize("label, message", [
    ("x" * 65, "exceeds the maximum length of 64"),
    ("tumor\\stroma", "holds 2 values"),
    ("tab\there", "control character"),
])
def test_segment_texts_that_do_not_fit_their_vr_are_refused(label, message):
    # highdicom leaves them to pydicom, which warns and writes them (dciodvfy: errors).
    from daskseg._inputs import segment_numbers
    from daskseg.synthetic import make_segment_descriptions

    descriptions = make_segment_descriptions(2)
    descriptions[1].SegmentLabel = label
    with pytest.raises(SegmentationInputError, match=f"Segment 2's SegmentLabel .*{message}"):
        segment_numbers(descriptions)
    descriptions = make_segment_descriptions(1)
    descriptions[0].SegmentedPropertyTypeCodeSequence[0].CodeMeaning = label
    with pytest.raises(SegmentationInputError, match=f"Segment 1's CodeMeaning .*{message}"):
        segment_numbers(descriptions)
    descriptions[0].SegmentedPropertyTypeCodeSequence[0].CodeMeaning = "x" * 64  # the longest
    assert segment_numbers(descriptions) == [1]


@pytest.mark.parametrize(("option", "value"), [
    ("omit_empty_frames", "no"), ("omit_empty_frames", "False"), ("overwrite", "yes"),
    ("use_extended_offset_table", 1), ("progress", "off"),
])
def test_flags_given_as_other_values_are_refused(tmp_path, option, value):
    """omit_empty_frames="no" was true (highdicom truth-tests it too), and omitted frames."""
    from daskseg import write_segmentation
    from daskseg.synthetic import make_segment_descriptions

    with pytest.raises(SegmentationTypeError, match=f"{option} is True or False, not {value!r}"):
        write_segmentation(np.zeros((64, 64), np.uint8), make_slide(64, 64, tile_size=(32, 32)),
                           make_segment_descriptions(1), tmp_path / "seg.dcm", client=None,
                           **{option: value})
    assert not (tmp_path / "seg.dcm").exists()
    write_segmentation(np.zeros((64, 64), np.uint8), make_slide(64, 64, tile_size=(32, 32)),
                       make_segment_descriptions(1), tmp_path / "ok.dcm", client=None,
                       **{option: np.bool_(False)})


def test_a_missing_memory_store_is_an_input_error():
    from daskseg._inputs import as_dask_array

    with pytest.raises(SegmentationInputError, match="Could not open the mask 'memory://"):
        as_dask_array("memory://no-such-mask-here.zarr")


@pytest.mark.parametrize("check, value, error, message", [
    # highdicom wrote these (an IS out of range, a UI of letters: invalid files) or raised
    # "'<' not supported between instances of 'str' and 'int'" as a refusal of the header.
    (check_numbers, 2**40, SegmentationInputError, "out of range: 1 to 2147483647"),
    (check_numbers, 0, SegmentationInputError, "out of range"),
    (check_numbers, "5", SegmentationTypeError, "a whole number, not '5'"),
    (check_numbers, True, SegmentationTypeError, "a whole number"),
    (check_uids, "1.2.abc", SegmentationInputError, "not a valid UID"),
    (check_uids, "1.02.3", SegmentationInputError, "not a valid UID"),
    (check_uids, "1." + "2" * 63, SegmentationInputError, "at most 64 characters"),
    (check_uids, 123, SegmentationTypeError, "a UID string, not int"),
])
def test_numbers_and_uids_of_the_header_are_checked(check, value, error, message):
    with pytest.raises(error, match=message):
        check(option=value)


def test_valid_numbers_and_uids_pass():
    check_numbers(series_number=1, instance_number=np.int64(2**31 - 1))
    check_uids(sop_instance_uid=hd.UID(), series_instance_uid=None)


def test_a_destination_ending_in_a_separator_names_a_folder_and_is_refused(tmp_path):
    """pathlib drops the separator: "out/new/" was written as a file named "new"."""
    for destination in (f"{tmp_path}/new/", f"{tmp_path}/seg.dcm/"):
        with pytest.raises(SegmentationInputError, match="names a folder"):
            check_destination(destination, overwrite=False)
    assert not (tmp_path / "new").exists()


def test_a_device_or_fifo_destination_is_refused_not_replaced(tmp_path, capsys):
    """overwrite=True renamed the SEG onto a FIFO or a device node, which became a file (as
    root, /dev/null); refused before the work, and at the rename if one appeared since."""
    import os
    import stat

    from daskseg import write_segmentation
    from daskseg._file import replace_atomically
    from daskseg._inputs import check_store_folder
    from daskseg.synthetic import make_segment_descriptions

    os.mkfifo(tmp_path / "fifo")
    nodes = [(tmp_path / "fifo", "FIFO")]
    if os.geteuid() == 0:
        os.mknod(tmp_path / "null", 0o666 | stat.S_IFCHR, os.makedev(1, 3))
        nodes.append((tmp_path / "null", "character device"))
    (tmp_path / "link").symlink_to(tmp_path / "fifo")
    nodes.append((tmp_path / "link", "FIFO"))
    (tmp_path / "seg.tmp").write_bytes(b"a finished SEG")
    for node, kind in nodes:
        for refuse, arguments in ((check_destination, (node, True)),
                                  (check_store_folder, (node,)),
                                  (replace_atomically, (tmp_path / "seg.tmp", node, True))):
            with pytest.raises(SegmentationInputError, match=f"is a {kind}, not a file"):
                refuse(*arguments)
        with pytest.raises(SegmentationInputError, match=f"is a {kind}, not a file"):
            write_segmentation(np.ones((8, 8), bool), make_slide(8, 8),
                               make_segment_descriptions(1), node, overwrite=True)
        assert not stat.S_ISREG(os.stat(node).st_mode)
    assert (tmp_path / "seg.tmp").read_bytes() == b"a finished SEG"
    # A pyramid's level renamed aside, then removed, and `daskseg decode -o NAME.npy`, which
    # was refused only at its rename, after the work.
    from daskseg import write_segmentation_pyramid
    from daskseg.cli import main

    (tmp_path / "pyramid").mkdir()
    os.mkfifo(tmp_path / "pyramid" / "level-0.dcm")
    with pytest.raises(SegmentationInputError, match="level-0.dcm is a FIFO, not a file"):
        write_segmentation_pyramid(np.ones((64, 64), bool), [make_slide(64, 64)],
                                   make_segment_descriptions(1), tmp_path / "pyramid",
                                   downsample_factors=[2], overwrite=True)
    seg = write_segmentation(np.ones((8, 8), bool), make_slide(8, 8),
                             make_segment_descriptions(1), tmp_path / "seg.dcm")
    os.mkfifo(tmp_path / "labels.npy")
    capsys.readouterr()
    assert main(["decode", str(seg), "-o", str(tmp_path / "labels.npy"), "--overwrite",
                 "--quiet", "--scheduler", "tcp://127.0.0.1:1"]) == 1
    assert "labels.npy is a FIFO, not a file" in capsys.readouterr().err  # before any client
    for fifo in (tmp_path / "pyramid" / "level-0.dcm", tmp_path / "labels.npy"):
        assert stat.S_ISFIFO(os.stat(fifo).st_mode)


def test_a_dask_array_of_a_zarr_store_removed_during_the_write_is_refused(tmp_path, thread_client,
                                                                         monkeypatch):
    """da.from_zarr(path): the store removed as its blocks were read gave a SEG of whatever
    blocks were read before (a helper's: 43,008 of 1,048,576 pixels) without a word, where the
    same store as a path or zarr.Array was refused."""
    import shutil

    import zarr

    from daskseg import write_segmentation
    from daskseg._inputs import check_zarr_folders_kept, local_zarr_folders
    from daskseg.synthetic import make_segment_descriptions

    store = tmp_path / "mask.zarr"
    zarr.create_array(str(store), shape=(64, 64), chunks=(32, 32), dtype="uint8")[:] = 1
    monkeypatch.chdir(tmp_path)
    for mask in (da.from_zarr(str(store)), (da.from_zarr(zarr.open_array("mask.zarr")) + 0)[:40],
                 da.from_zarr(str(store), inline_array=True) + 1):
        assert local_zarr_folders(mask) == [store]
    assert local_zarr_folders(da.ones((4, 4))) == [] == local_zarr_folders(np.ones((4, 4)))

    def remove_after_the_first(block, block_info=None):
        if block_info and block_info[0]["chunk-location"] == (0, 0):
            shutil.rmtree(store)  # blocks not yet read read the fill value, 0
        return block

    mask = da.from_zarr(str(store)).rechunk((32, 32)).map_blocks(remove_after_the_first,
                                                                      dtype=np.uint8)
    with pytest.raises(SegmentationInputError, match="was removed while the SEG was made"):
        write_segmentation(mask, make_slide(64, 64, tile_size=(32, 32)),
                           make_segment_descriptions(1), tmp_path / "seg.dcm",
                           client=thread_client)
    assert not (tmp_path / "seg.dcm").exists()
    with pytest.raises(SegmentationInputError, match="was removed"):
        check_zarr_folders_kept([store])


@pytest.mark.parametrize("change", [lambda b: b[:-1],
                                    lambda b: np.pad(b, [(0, 1)] + [(0, 0)] * (b.ndim - 1))],
                         ids=["short", "long"])
def test_dask_blocks_of_another_shape_than_their_chunks_are_refused(tmp_path, thread_client,
                                                                    change, request):
    """A map_blocks that crops or pads its blocks, chunks not saying so: short blocks were
    written with empty rows between them. A block of another shape that reaches the encoder
    is refused (checked there: a check of every block of the mask doubled a graph of 65,536
    chunks and made its write 40% slower); longer ones mostly fail in numpy first, whose
    ValueError passes through as a task's own (or Dask's slicing cuts them to their chunks)."""
    from daskseg import write_segmentation
    from daskseg.synthetic import make_ct_series, make_segment_descriptions

    ones = np.ones((200, 230), np.uint8)
    mask = da.from_array(ones, chunks=50).map_blocks(change, dtype=np.uint8)
    short = "short" in request.node.callspec.id
    with pytest.raises(SegmentationInputError if short else ValueError,
                       match=r"came as an array of shape \(\d+, \d+\), not \(\d+, \d+\): the "
                             r"Dask array's blocks are not the shape" if short else ""):
        write_segmentation(mask, make_slide(200, 230, tile_size=(64, 64)),
                           make_segment_descriptions(1), tmp_path / "slide.dcm",
                           client=thread_client)
    aligned = da.from_array(ones, chunks=64).map_blocks(change, dtype=np.uint8)  # no rechunk
    with pytest.raises(ValueError, match="not the shape its chunks declare" if short else ""):
        write_segmentation(aligned, make_slide(200, 230, tile_size=(64, 64)),
                           make_segment_descriptions(1), tmp_path / "slide.dcm",
                           client=thread_client)
    if short:  # a series' blocks are reshaped into planes: numpy refuses a short one
        volume = da.from_array(np.ones((4, 16, 16), np.uint8), chunks=(2, 16, 16)).map_blocks(
            lambda b: change(b.T).T, dtype=np.uint8)  # the last axis, columns
        with pytest.raises(ValueError, match="cannot reshape"):
            write_segmentation(volume, make_ct_series(4, 16, 16), make_segment_descriptions(1),
                               tmp_path / "volume.dcm", client=thread_client)
    assert not list(tmp_path.iterdir())
    # Blocks as declared pass as they were (a user's own exception too, unchanged).
    assert write_segmentation(da.from_array(ones, chunks=50), make_slide(200, 230),
                              make_segment_descriptions(1), tmp_path / "slide.dcm",
                              client=thread_client).exists()
