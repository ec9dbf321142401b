"""write_segmentation_pyramid against highdicom's create_segmentation_pyramid."""

from __future__ import annotations

import io
import os
import shutil
import subprocess

import dask.array as da
import highdicom as hd
import numpy as np
import pydicom
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from daskseg import (
    DestinationExistsError,
    SegmentationInputError,
    SegmentationTypeError,
    write_segmentation_pyramid,
)
from daskseg.plan import aligned_chunks
from daskseg.pyramid import downsample, nearest_indices
from daskseg.synthetic import make_segment_descriptions, make_slide, make_tissue_mask

ROWS, COLUMNS, TILE = 300, 420, 64
OPTIONS = dict(series_number=5, manufacturer="m", manufacturer_model_name="m",
               software_versions="1", device_serial_number="1")


def source_pyramid(factors):
    """A slide pyramid: one header per level, same study, frame of reference and pyramid."""
    base = make_slide(ROWS, COLUMNS, tile_size=(TILE, TILE), pyramid_uid=hd.UID())
    levels = [base]
    for f in factors:
        level = make_slide(int(ROWS / f), int(COLUMNS / f), tile_size=(TILE, TILE),
                           pixel_spacing=0.00025 * f, study_instance_uid=base.StudyInstanceUID,
                           pyramid_uid=base.PyramidUID,
                           series_instance_uid=base.SeriesInstanceUID)
        level.FrameOfReferenceUID = base.FrameOfReferenceUID
        levels.append(level)
    return levels


def mask_for(segmentation_type):
    if segmentation_type == "FRACTIONAL":
        stack = make_tissue_mask(ROWS, COLUMNS, 2, chunks=(70, 90), stacked=True).compute()
        ramp = np.linspace(0.1, 1.0, COLUMNS, dtype=np.float32)[None, :, None]
        return (stack * ramp).astype(np.float32)
    return make_tissue_mask(ROWS, COLUMNS, 2, chunks=(70, 90)).compute()


KEY_ATTRIBUTES = ["TotalPixelMatrixRows", "TotalPixelMatrixColumns", "Rows", "Columns",
                  "PyramidUID", "SeriesInstanceUID", "InstanceNumber", "NumberOfFrames",
                  "SegmentationType", "PyramidLabel"]


def assert_same_level_pixels(path, in_memory, segmentation_type, level):
    """Our level's pixels as highdicom's level (in memory) holds them: labels equal, FRACTIONAL
    within one stored unit (the two resample fractions apart)."""
    ours_seg = hd.seg.segread(path)
    theirs_seg = hd.seg.Segmentation.from_dataset(in_memory)
    if segmentation_type == "FRACTIONAL":
        a = ours_seg.get_total_pixel_matrix(rescale_fractional=False).astype(int)
        b = theirs_seg.get_total_pixel_matrix(rescale_fractional=False).astype(int)
        assert np.abs(a - b).max() <= 1, level
    else:
        np.testing.assert_array_equal(
            ours_seg.get_total_pixel_matrix(combine_segments=True),
            theirs_seg.get_total_pixel_matrix(combine_segments=True), err_msg=str(level))


@pytest.mark.parametrize("with_source_pyramid", [False, True])
@pytest.mark.parametrize("segmentation_type", ["BINARY", "LABELMAP", "FRACTIONAL"])
def test_levels_match_highdicom(tmp_path, thread_client, segmentation_type, with_source_pyramid):
    factors = [2, 4.5]
    sources = source_pyramid(factors) if with_source_pyramid else [make_slide(
        ROWS, COLUMNS, tile_size=(TILE, TILE))]
    mask = mask_for(segmentation_type)
    descriptions = make_segment_descriptions(2, segmentation_type=segmentation_type)
    series, pyramid = hd.UID(), hd.UID()
    paths = write_segmentation_pyramid(
        mask, sources, descriptions, tmp_path, downsample_factors=None if with_source_pyramid
        else factors, series_instance_uid=series, pyramid_uid=pyramid, pyramid_label="levels",
        segmentation_type=segmentation_type, transfer_syntax_uid="1.2.840.10008.1.2.4.90",
        client=thread_client, **OPTIONS,
    )
    theirs = hd.seg.create_segmentation_pyramid(
        sources, [mask[None]], segmentation_type, descriptions, series_instance_uid=series,
        pyramid_uid=pyramid, pyramid_label="levels",
        downsample_factors=None if with_source_pyramid else factors,
        transfer_syntax_uid="1.2.840.10008.1.2.4.90", **OPTIONS,
    )
    assert [p.name for p in paths] == ["level-0.dcm", "level-1.dcm", "level-2.dcm"]
    for level, (path, in_memory) in enumerate(zip(paths, theirs)):
        ours = pydicom.dcmread(path)
        # Compare with highdicom's object as written to a file (DS values as stored).
        buffer = io.BytesIO()
        in_memory.save_as(buffer)
        buffer.seek(0)
        expected = pydicom.dcmread(buffer)
        for keyword in KEY_ATTRIBUTES:
            assert ours.get(keyword) == expected.get(keyword), (level, keyword)
        for sequence in ["SegmentSequence", "TotalPixelMatrixOriginSequence",
                         "SharedFunctionalGroupsSequence", "ReferencedSeriesSequence",
                         "SourceImageSequence"]:
            assert ours[sequence].value == expected[sequence].value, (level, sequence)
        assert_same_level_pixels(path, in_memory, segmentation_type, level)
        if shutil.which("dciodvfy"):
            run = subprocess.run(["dciodvfy", "-new", str(path)], capture_output=True, text=True)
            errors = [line for line in run.stderr.splitlines() if line.startswith("Error")]
            allowed = ("Information Object Not found", "SegmentNumber") if (
                segmentation_type == "LABELMAP") else ()
            assert [e for e in errors if not any(a in e for a in allowed)] == [], path.name


def fail_after_level_0(block, level_0):
    """Read as usual until level 0's file is written (under its hidden name until every level
    is), then fail (the next level's reads)."""
    folder, name = os.path.split(level_0)
    if os.path.isdir(folder) and any(f.startswith(f".{name}.") for f in os.listdir(folder)):
        raise RuntimeError("the mask's store went away")
    return block


def test_no_partial_pyramid_on_failure(tmp_path, thread_client):
    labels = make_tissue_mask(ROWS, COLUMNS, 2, chunks=(70, 90))
    source = make_slide(ROWS, COLUMNS, tile_size=(TILE, TILE))
    descriptions = make_segment_descriptions(2)
    (tmp_path / "level-1.dcm").write_bytes(b"keep")
    with pytest.raises(DestinationExistsError, match="level-1.dcm"):
        write_segmentation_pyramid(labels, [source], descriptions, tmp_path,
                                   downsample_factors=[2], client=thread_client, **OPTIONS)
    assert [p.name for p in tmp_path.iterdir()] == ["level-1.dcm"]  # refused before any work

    (tmp_path / "level-1.dcm").unlink()
    flaky = labels.map_blocks(fail_after_level_0, str(tmp_path / "level-0.dcm"),
                              dtype=labels.dtype)
    with pytest.raises(RuntimeError, match="went away"):
        write_segmentation_pyramid(flaky, [source], descriptions, tmp_path,
                                   downsample_factors=[2, 4], client=thread_client, **OPTIONS)
    assert list(tmp_path.iterdir()) == []  # level 0 was written, then removed
    # A folder made for the pyramid goes again with it; one whose parent is missing is refused.
    flaky = labels.map_blocks(fail_after_level_0, str(tmp_path / "new" / "level-0.dcm"),
                              dtype=labels.dtype)
    with pytest.raises(RuntimeError, match="went away"):
        write_segmentation_pyramid(flaky, [source], descriptions, tmp_path / "new",
                                   downsample_factors=[2, 4], client=thread_client, **OPTIONS)
    assert list(tmp_path.iterdir()) == []
    with pytest.raises(SegmentationInputError, match="its parent must exist"):
        write_segmentation_pyramid(labels, [source], descriptions, tmp_path / "a" / "b",
                                   downsample_factors=[2], client=thread_client, **OPTIONS)
    paths = write_segmentation_pyramid(labels, [source], descriptions, tmp_path / "new",
                                       downsample_factors=[2], client=thread_client, **OPTIONS)
    assert [p.name for p in paths] == ["level-0.dcm", "level-1.dcm"]


def test_an_overwritten_pyramid_is_replaced_whole_or_not_at_all(tmp_path, thread_client):
    """A rewrite that failed at level 1 had removed its new level 0 and left the old levels
    1..3 (the old level 0 was lost); a shallower rewrite left the old deeper levels beside."""
    labels = make_tissue_mask(ROWS, COLUMNS, 2, chunks=(70, 90))
    source = make_slide(ROWS, COLUMNS, tile_size=(TILE, TILE))
    descriptions = make_segment_descriptions(2)
    write_segmentation_pyramid(labels, [source], descriptions, tmp_path,
                               downsample_factors=[2, 4, 8], client=thread_client, **OPTIONS)
    old = {p.name: p.read_bytes() for p in tmp_path.iterdir()}
    assert sorted(old) == [f"level-{k}.dcm" for k in range(4)]
    flaky = labels.map_blocks(fail_after_level_0, str(tmp_path / "level-0.dcm"),
                              dtype=labels.dtype)
    with pytest.raises(RuntimeError, match="went away"):
        write_segmentation_pyramid(flaky, [source], descriptions, tmp_path, overwrite=True,
                                   downsample_factors=[2], client=thread_client, **OPTIONS)
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir()} == old

    paths = write_segmentation_pyramid(labels, [source], descriptions, tmp_path, overwrite=True,
                                       downsample_factors=[2], client=thread_client, **OPTIONS)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["level-0.dcm", "level-1.dcm"]
    uids = {pydicom.dcmread(p, stop_before_pixels=True).PyramidUID for p in paths}
    assert len(uids) == 1


def test_a_level_path_that_is_a_folder_is_refused_before_any_work(tmp_path, thread_client):
    """The new level 0 had replaced the old one, then a raw IsADirectoryError at level 1."""
    labels = make_tissue_mask(ROWS, COLUMNS, 2, chunks=(70, 90))
    source = make_slide(ROWS, COLUMNS, tile_size=(TILE, TILE))
    descriptions = make_segment_descriptions(2)
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "level-0.dcm").write_bytes(b"old")
    (tmp_path / "a" / "level-1.dcm").mkdir()
    with pytest.raises(SegmentationInputError, match=r"level-1.dcm is a folder"):
        write_segmentation_pyramid(labels, [source], descriptions, tmp_path / "a",
                                   downsample_factors=[2, 4], overwrite=True,
                                   client=thread_client, **OPTIONS)
    assert sorted(p.name for p in (tmp_path / "a").iterdir()) == ["level-0.dcm", "level-1.dcm"]
    assert (tmp_path / "a" / "level-0.dcm").read_bytes() == b"old"


def test_a_dangling_link_at_a_level_path_exists(tmp_path, thread_client):
    """It was refused only once levels 0 and 1 were renamed into place, and they stayed."""
    (tmp_path / "level-2.dcm").symlink_to(tmp_path / "nowhere.dcm")
    with pytest.raises(DestinationExistsError, match="level-2.dcm exists"):
        write_segmentation_pyramid(make_tissue_mask(ROWS, COLUMNS, 2, chunks=(70, 90)),
                                   [make_slide(ROWS, COLUMNS, tile_size=(TILE, TILE))],
                                   make_segment_descriptions(2), tmp_path,
                                   downsample_factors=[2, 4], client=thread_client, **OPTIONS)
    assert [p.name for p in tmp_path.iterdir()] == ["level-2.dcm"]


def test_a_rename_that_fails_midway_puts_the_old_levels_back(tmp_path, thread_client,
                                                             monkeypatch):
    labels = make_tissue_mask(ROWS, COLUMNS, 2, chunks=(70, 90))
    source = make_slide(ROWS, COLUMNS, tile_size=(TILE, TILE))
    descriptions = make_segment_descriptions(2)
    old = {f"level-{k}.dcm": f"old {k}".encode() for k in range(4)}
    for name, content in old.items():
        (tmp_path / name).write_bytes(content)
    renamed = []

    def fail_at_level_1(new, path, overwrite):
        if path.name == "level-1.dcm":
            raise PermissionError(f"{path}: not allowed")
        renamed.append(path.name)
        os.replace(new, path)

    monkeypatch.setattr("daskseg.pyramid.replace_atomically", fail_at_level_1)
    with pytest.raises(PermissionError):
        write_segmentation_pyramid(labels, [source], descriptions, tmp_path,
                                   downsample_factors=[2], overwrite=True, client=thread_client,
                                   **OPTIONS)
    assert renamed == ["level-0.dcm"]  # level 0 was replaced, then put back
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir()} == old


@pytest.mark.parametrize("where", ["old level set aside", "new level put in place",
                                   "level written"])
def test_an_interruption_as_a_file_is_renamed_leaves_the_old_pyramid(tmp_path, thread_client,
                                                                      monkeypatch, where):
    """A signal's exception (Ctrl-C, SIGTERM in the CLI) that came as a rename or a level's
    write returned left that file out of the undoing: an old level under its hidden name, a new
    level among the old ones, or a finished level hidden beside them."""
    import daskseg.pyramid as pyramid

    labels = make_tissue_mask(ROWS, COLUMNS, 2, chunks=(70, 90))
    source = make_slide(ROWS, COLUMNS, tile_size=(TILE, TILE))
    # A new level in place is undone by putting the old one back over it: none here.
    old = ({} if where == "new level put in place" else
           {f"level-{k}.dcm": f"old {k}".encode() for k in range(2)})
    for name, content in old.items():
        (tmp_path / name).write_bytes(content)

    def interrupted_after(function):
        def call(*args, **kwargs):
            function(*args, **kwargs)
            raise KeyboardInterrupt  # as a signal's handler raises when the call returns
        return call

    if where == "old level set aside":
        monkeypatch.setattr(pyramid.os, "rename", interrupted_after(os.rename))
    elif where == "new level put in place":
        monkeypatch.setattr(pyramid, "replace_atomically",
                            interrupted_after(pyramid.replace_atomically))
    else:
        monkeypatch.setattr(pyramid, "write_segmentation",
                            interrupted_after(pyramid.write_segmentation))
    with pytest.raises(KeyboardInterrupt):
        write_segmentation_pyramid(labels, [source], make_segment_descriptions(2), tmp_path,
                                   downsample_factors=[2], overwrite=True, client=thread_client,
                                   **OPTIONS)
    monkeypatch.undo()
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir()} == old


@pytest.mark.parametrize("factors, error, message", [
    ([2, float("nan")], SegmentationInputError, "finite, ascending and above 1, got .2.0, nan"),
    ([2, float("inf")], SegmentationInputError, "finite, ascending and above 1"),
    ("2,4", SegmentationTypeError, "a sequence of numbers, like .2, 4, 8., not '2,4'"),
    (2, SegmentationTypeError, "a sequence of numbers"),
    ([2, "4"], SegmentationTypeError, "a sequence of numbers"),
])
def test_factors_that_make_no_pyramid_are_refused(tmp_path, factors, error, message):
    """NaN and inf made a raw ValueError (int(nan)), a string a raw TypeError."""
    with pytest.raises(error, match=message):
        write_segmentation_pyramid(np.zeros((ROWS, COLUMNS), np.uint8),
                                   [make_slide(ROWS, COLUMNS, tile_size=(TILE, TILE))],
                                   make_segment_descriptions(1), tmp_path,
                                   downsample_factors=factors, client=None, **OPTIONS)
    assert list(tmp_path.iterdir()) == []


def test_a_series_folder_as_source_is_refused(tmp_path):
    """pydicom's IsADirectoryError was all it said."""
    (tmp_path / "ct").mkdir()
    with pytest.raises(SegmentationInputError, match="is a folder .* tiled .whole-slide. images"):
        write_segmentation_pyramid(np.zeros((8, 8), np.uint8), [tmp_path / "ct"],
                                   make_segment_descriptions(1), tmp_path / "out",
                                   downsample_factors=[2], client=None, **OPTIONS)
    assert [p.name for p in tmp_path.iterdir()] == ["ct"]


def test_the_series_date_follows_the_content_date_as_in_highdicom(tmp_path, thread_client):
    """A content date in the past was refused: the series date (now) came after it."""
    import datetime

    labels = make_tissue_mask(ROWS, COLUMNS, 2, chunks=(70, 90))
    source = make_slide(ROWS, COLUMNS, tile_size=(TILE, TILE))
    paths = write_segmentation_pyramid(
        labels, [source], make_segment_descriptions(2), tmp_path, downsample_factors=[2],
        client=thread_client, content_date=datetime.date(2020, 1, 2),
        content_time=datetime.time(3, 4, 5), **OPTIONS,
    )
    for path in paths:
        header = pydicom.dcmread(path, stop_before_pixels=True)
        assert (header.SeriesDate, header.SeriesTime) == ("20200102", "030405")


@pytest.mark.parametrize("factor", [2, 3, 20])
@pytest.mark.parametrize("stacked", [False, True])
def test_nearest_picks_per_chunk_equal_picks_of_the_whole(factor, stacked):
    """Ragged chunks, sizes that the factor does not divide, chunks that keep no row at all."""
    rng = np.random.default_rng(factor)
    mask = rng.integers(0, 4, size=(97, 131, 2) if stacked else (97, 131), dtype=np.uint8)
    shape = (int(97 / factor), int(131 / factor))
    chunks = (aligned_chunks(shape[0], 8, 16), aligned_chunks(shape[1], 8, 16))
    got = downsample(da.from_array(mask, chunks=(7, 11) + mask.shape[2:]), shape, "nearest",
                     chunks)
    expected = mask[nearest_indices(97, shape[0])][:, nearest_indices(131, shape[1])]
    assert got.chunks[:2] == chunks
    np.testing.assert_array_equal(got.compute(scheduler="sync"), expected)


def pillow_bilinear(mask, shape):
    """``mask`` (rows, columns[, planes]) resized to ``shape`` by Pillow's bilinear filter,
    plane by plane, as highdicom resamples a FRACTIONAL mask."""
    from PIL import Image

    planes = mask[..., None] if mask.ndim == 2 else mask
    resized = [np.asarray(Image.fromarray(planes[..., k], mode="F").resize(
        shape[::-1], Image.Resampling.BILINEAR)) for k in range(planes.shape[-1])]
    return np.stack(resized, axis=-1).reshape(*shape, *mask.shape[2:])


@pytest.mark.parametrize("size", [(97, 131), (300, 60), (200, 100)])
@pytest.mark.parametrize("factor", [2, 3, 4.5, 20])
def test_bilinear_equals_pillow_to_the_last_bit(factor, size):
    """highdicom resamples a FRACTIONAL mask with Pillow before scaling it to stored values:
    a float off by one unit in the last place may round to another stored value. Factors
    that are not powers of 2 (97 / 48), taps summed in order (4.5: ten of them), and a tall
    mask, whose rows Pillow 13 resamples first (200 x 100 at factor 2: columns first, its rule
    being strict)."""
    rng = np.random.default_rng(int(factor))
    mask = rng.random((*size, 2), dtype=np.float32)
    shape = (int(size[0] / factor), int(size[1] / factor))
    chunks = (aligned_chunks(shape[0], 8, 16), aligned_chunks(shape[1], 8, 16))
    got = downsample(da.from_array(mask, chunks=(7, 11, 2)), shape, "bilinear", chunks)
    assert got.shape == (*shape, 2)
    np.testing.assert_array_equal(got.compute(scheduler="sync"), pillow_bilinear(mask, shape))


@pytest.mark.parametrize("size", [(97, 131), (131, 33)])
@pytest.mark.parametrize("factor", [2, 3, 20])
def test_bilinear_in_small_pieces_equals_pillow_and_reads_each_chunk_once(factor, size,
                                                                          monkeypatch):
    """Tasks cut to a few rows and columns (as a wide slide of many segments is cut) give
    Pillow's pixels, and each of the mask's chunks is computed once."""
    from daskseg import pyramid

    monkeypatch.setattr(pyramid, "_MAX_SPAN", 24)
    monkeypatch.setattr(pyramid, "_MAX_BAND", 5)
    monkeypatch.setattr(pyramid, "_RESAMPLE_BYTES", 24 * 3 * 2 * pyramid._BYTES_PER_VALUE)
    rng = np.random.default_rng(factor)
    mask = rng.random((*size, 2), dtype=np.float32)
    shape = (int(size[0] / factor), int(size[1] / factor))
    chunks = (aligned_chunks(shape[0], 8, 16), aligned_chunks(shape[1], 8, 16))
    computed = []

    def chunk_of(block, block_info=None):
        computed.append(block_info[None]["chunk-location"])
        return block

    lazy = da.from_array(mask, chunks=(7, 11, 2)).map_blocks(chunk_of, dtype=np.float32)
    got = downsample(lazy, shape, "bilinear", chunks)
    # Pieces of the level's chunks, one layer of tasks a pass and one joining the first's
    # pieces (a layer per piece took minutes to build for a large slide).
    for pieces, level in zip(got.chunks[:2], chunks):
        assert set(np.cumsum(level)) <= set(np.cumsum(pieces))
    assert len(got.dask.layers) == len(lazy.dask.layers) + 3
    np.testing.assert_array_equal(got.compute(scheduler="sync"), pillow_bilinear(mask, shape))
    assert sorted(computed) == sorted(set(computed))
    assert len(computed) == -(-size[0] // 7) * -(-size[1] // 11)


@pytest.mark.parametrize("zero_axis", [0, 1])
def test_bilinear_levels_of_a_mask_with_chunks_of_no_pixels(zero_axis):
    """Dask makes chunks of no pixels (a concatenation with an empty piece, say)."""
    rng = np.random.default_rng(zero_axis)
    mask = rng.random((256, 256), dtype=np.float32)
    chunks = [(128, 128), (128, 128)]
    chunks[zero_axis] = (100, 0, 156)
    got = downsample(da.from_array(mask, chunks=tuple(chunks)), (128, 128), "bilinear",
                     ((128,), (128,))).compute(scheduler="sync")
    np.testing.assert_array_equal(got, pillow_bilinear(mask, (128, 128)))


@pytest.mark.parametrize("dtype", [np.uint8, np.uint16])
def test_a_16_bit_label_mask_is_picked_as_pillow_picks_16_bit_pixels(tmp_path, dtype):
    """highdicom hands a uint16 mask to Pillow as mode I;16, whose nearest neighbour takes
    floor((x + 0.5) * scale), not the running sum of its other modes: at 1.6x, the 8th
    output column takes source column 11 from 8 bits (the sum falls short of 12.0), 12 from 16."""
    mask = np.zeros((4, 16), dtype)
    mask[:, 12] = 1
    source = make_slide(4, 16, tile_size=(16, 16))
    descriptions = make_segment_descriptions(1, segmentation_type="LABELMAP")
    theirs = hd.seg.create_segmentation_pyramid([source], [mask[None]], "LABELMAP", descriptions,
                                               None, downsample_factors=[1.6], **OPTIONS)
    paths = write_segmentation_pyramid(mask, [source], descriptions, tmp_path,
                                       downsample_factors=[1.6], segmentation_type="LABELMAP",
                                       client=None, **OPTIONS)
    ours = hd.seg.segread(paths[1]).get_total_pixel_matrix(combine_segments=True)
    expected = theirs[1].get_total_pixel_matrix(combine_segments=True)
    np.testing.assert_array_equal(ours, expected)
    assert expected.any() == (dtype == np.uint16)  # the rules differ here


@st.composite
def _pyramid_cases(draw):
    segmentation_type = draw(st.sampled_from(["BINARY", "LABELMAP", "FRACTIONAL"]))
    rows, columns = draw(st.integers(8, 160)), draw(st.integers(8, 160))
    tile = (draw(st.integers(4, 48)), draw(st.integers(4, 48)))
    factors = sorted(set(draw(st.lists(st.sampled_from([1.5, 2, 2.5, 3, 4, 4.5]),
                                       min_size=1, max_size=3))))
    rng = np.random.default_rng(draw(st.integers(0, 2**16)))
    coarse = rng.integers(0, 3, size=(rows // 6 + 1, columns // 6 + 1))
    labels = np.kron(coarse, np.ones((6, 6), np.int64))[:rows, :columns].astype(np.uint8)
    if segmentation_type == "FRACTIONAL":
        levels = rng.uniform(0.1, 1.0, size=(rows, columns, 1))
        mask = (np.stack([labels == 1, labels == 2], -1) * levels).astype(np.float32)
    else:
        mask = labels
    return segmentation_type, mask, tile, factors


@settings(max_examples=15, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(case=_pyramid_cases())
def test_random_pyramids_match_highdicom(tmp_path_factory, thread_client, case):
    """Any size, tile size and factors: the levels' sizes, frames and pixels are highdicom's."""
    segmentation_type, mask, tile, factors = case
    rows, columns = mask.shape[:2]
    source = make_slide(rows, columns, tile_size=tile)
    descriptions = make_segment_descriptions(2, segmentation_type=segmentation_type)
    series, pyramid = hd.UID(), hd.UID()
    paths = write_segmentation_pyramid(
        mask, [source], descriptions, tmp_path_factory.mktemp("pyramid"),
        downsample_factors=factors, series_instance_uid=series, pyramid_uid=pyramid,
        segmentation_type=segmentation_type, client=thread_client, **OPTIONS,
    )
    theirs = hd.seg.create_segmentation_pyramid(
        [source], [mask[None]], segmentation_type, descriptions, series_instance_uid=series,
        pyramid_uid=pyramid, downsample_factors=factors, **OPTIONS,
    )
    assert len(paths) == len(theirs)
    for level, (path, in_memory) in enumerate(zip(paths, theirs)):
        ours = pydicom.dcmread(path)
        for keyword in KEY_ATTRIBUTES:
            assert ours.get(keyword) == in_memory.get(keyword), (level, keyword)
        assert_same_level_pixels(path, in_memory, segmentation_type, level)


def test_levels_of_two_slides_are_refused(tmp_path):
    """Levels of another series, or of another pyramid, made one SEG series spanning two
    studies; highdicom refuses both."""
    levels = source_pyramid([2])
    other = make_slide(ROWS // 2, COLUMNS // 2, tile_size=(TILE, TILE), pyramid_uid=hd.UID())
    elsewhere = make_slide(ROWS // 2, COLUMNS // 2, tile_size=(TILE, TILE),
                           series_instance_uid=levels[0].SeriesInstanceUID,
                           pyramid_uid=hd.UID())
    mask = np.zeros((ROWS, COLUMNS), np.uint8)
    for second, says in [(other, "belong to 2 series"), (elsewhere, "do not share one PyramidUID")]:
        with pytest.raises(SegmentationInputError, match=says):
            write_segmentation_pyramid(mask, [levels[0], second], make_segment_descriptions(1),
                                       tmp_path / "out", client=None, **OPTIONS)
        assert not (tmp_path / "out").exists()


def test_a_single_source_needs_no_list_and_per_level_uids(tmp_path, thread_client):
    """A slide given alone (a path, a Path or a Dataset), as write_segmentation takes it: a
    string was taken character by character (its '.' a folder). sop_instance_uids: one UID per
    level, as highdicom's."""
    slide = make_slide(ROWS, COLUMNS, tile_size=(TILE, TILE))
    slide.save_as(tmp_path / "slide.dcm", enforce_file_format=True)
    mask = make_tissue_mask(ROWS, COLUMNS, 2, chunks=(70, 90)).compute()
    uids = [hd.UID(), hd.UID()]
    for k, source in enumerate([str(tmp_path / "slide.dcm"), tmp_path / "slide.dcm", slide]):
        paths = write_segmentation_pyramid(
            mask, source, make_segment_descriptions(2), tmp_path / f"out{k}",
            downsample_factors=[2], sop_instance_uids=uids, client=thread_client, **OPTIONS)
        headers = [pydicom.dcmread(p, stop_before_pixels=True) for p in paths]
        assert [h.SOPInstanceUID for h in headers] == uids
        assert [h.TotalPixelMatrixRows for h in headers] == [ROWS, ROWS // 2]
    with pytest.raises(SegmentationInputError, match="sop_instance_uids takes one UID per level"):
        write_segmentation_pyramid(mask, slide, make_segment_descriptions(2), tmp_path / "bad",
                                   downsample_factors=[2], sop_instance_uids=uids[:1],
                                   client=None, **OPTIONS)
    # A bad UID of the last level is refused before the first level is written.
    with pytest.raises(SegmentationInputError, match=r"sop_instance_uids\[1\] '1.2.x' is not"):
        write_segmentation_pyramid(mask, slide, make_segment_descriptions(2), tmp_path / "bad",
                                   downsample_factors=[2], sop_instance_uids=[uids[0], "1.2.x"],
                                   client=thread_client, **OPTIONS)
    assert not list((tmp_path / "bad").glob("*"))


@pytest.mark.filterwarnings("ignore:Sending large graph")  # the Dask array's, made here
def test_a_mask_in_memory_is_not_sent_whole_in_each_levels_graph(tmp_path, dask_client):
    """A numpy mask went into every level's graph whole (distributed warned of a large graph
    each level): now blocks go with their tasks, levels are resampled here. Levels equal those
    of the same mask as a Dask array."""
    import warnings

    rng = np.random.default_rng(0)
    mask = rng.integers(0, 3, (4096, 4096), dtype=np.uint8)  # 16 MB: past the 10 MB warning
    slide = make_slide(4096, 4096, tile_size=(256, 256))
    # On worker processes, where a graph is pickled to reach them.
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        ours = write_segmentation_pyramid(mask, slide, make_segment_descriptions(2),
                                          tmp_path / "memory", downsample_factors=[2, 3],
                                          client=dask_client, **OPTIONS)
    assert not [w for w in caught if "large graph" in str(w.message)]
    lazy = write_segmentation_pyramid(da.from_array(mask, chunks=1024), slide,
                                      make_segment_descriptions(2), tmp_path / "lazy",
                                      downsample_factors=[2, 3], client=dask_client, **OPTIONS)
    for a, b in zip(ours, lazy, strict=True):
        np.testing.assert_array_equal(
            hd.seg.segread(a).get_total_pixel_matrix(combine_segments=True),
            hd.seg.segread(b).get_total_pixel_matrix(combine_segments=True))
