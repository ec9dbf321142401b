"""Damaged and hostile files: every reader path refuses them with one clear error, or reads right.

For each damage (tests/_damage.py) of each small SEG (every type and organization, native and
encapsulated, written by daskseg; and the tiled SEGs of other software in shared/testdata), and
for each reader path (open_segmentation; read_segmentation, computing the whole array and a
region; to_zarr; the CLI's decode and info), the outcome is either a SegmentationFileError (a
ValueError) naming the file, or, where the damage does not touch what was read, the values of
the undamaged file. Never another exception, a hang, unbounded memory or wrong values.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import pathlib
import subprocess
import sys
import textwrap
import time

import dask
import numpy as np
import psutil
import pytest
import zarr
from distributed import Client
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

from _damage import (
    CASES,
    NOT_A_SEG,
    SHARED_SEGS,
    SOURCES,
    bounded_memory,
    layout,
    read_all,
    write_source,
)
from daskseg import (
    DaskSegError,
    SegmentationFileError,
    SegmentationInputError,
    open_segmentation,
    read_segmentation,
)
from daskseg.cli import main


# The CLI's stderr is read whole: no report of an earlier test's garbage in it (see conftest).
pytestmark = pytest.mark.usefixtures("earlier_garbage_collected")


@pytest.fixture(scope="module")
def sources(tmp_path_factory):
    """name -> (path, Layout, values read from the undamaged file) of each small SEG."""
    folder = tmp_path_factory.mktemp("sources")
    found = {}
    with Client(processes=False, n_workers=1, threads_per_worker=2,
                dashboard_address=None) as client:
        for name in SOURCES:
            path = write_source(folder, name, client)
            found[name] = (path, layout(path.read_bytes()), read_all(path))
    return found


def source_for(request, sources, name):
    if name not in sources:  # a SEG of other software, parsed and read once per module
        testdata = request.getfixturevalue("testdata")
        path = testdata / name
        if not path.exists():
            pytest.skip(f"{path} is absent")
        sources[name] = (path, layout(path.read_bytes()), read_all(path))
    return sources[name]


def assert_clean(error: BaseException, path: pathlib.Path) -> None:
    """One clear daskseg error, naming the file (not an error from deep inside)."""
    assert isinstance(error, SegmentationFileError) and isinstance(error, ValueError), (
        f"{type(error).__module__}.{type(error).__name__}: {error}"
    )
    assert path.name in str(error), f"the message does not name the file: {error}"


@contextlib.contextmanager
def outcome(path: pathlib.Path, *, must_refuse: bool):
    """Run a read: it raises a clean error, or (when allowed) returns what the block checks."""
    try:
        with bounded_memory():
            yield
    except Exception as error:
        assert_clean(error, path)
        return
    assert not must_refuse, "a damaged file was read without an error"


def check_api(path: pathlib.Path, damaged, source_layout, expected: np.ndarray) -> None:
    """open_segmentation, read_segmentation (whole, region) and to_zarr on one damaged file."""
    refuse_all = damaged.at_open or bool(damaged.frames)
    reader = None
    with outcome(path, must_refuse=damaged.at_open):
        reader = open_segmentation(path)
    with dask.config.set(scheduler="synchronous"):
        with outcome(path, must_refuse=refuse_all):
            got = read_segmentation(path).compute()
            np.testing.assert_array_equal(got, expected)
            assert got.dtype == expected.dtype
        region = source_layout.region_without(set(damaged.frames))
        if region is not None:
            with outcome(path, must_refuse=damaged.at_open):
                got = read_segmentation(path)[region].compute()
                np.testing.assert_array_equal(got, expected[region])
        if reader is not None:
            store = path.with_suffix(".zarr")
            with outcome(path, must_refuse=refuse_all):
                array = reader.to_zarr(str(store), overwrite=True)
                np.testing.assert_array_equal(zarr.open_array(str(store), mode="r")[:], expected)
                assert array.shape == expected.shape


def run_cli(argv, capsys) -> tuple[int, str, str]:
    with bounded_memory():
        status = main(argv)
    captured = capsys.readouterr()
    return status, captured.out, captured.err


def assert_cli_refused(status: int, err: str, path: pathlib.Path) -> None:
    lines = err.strip().splitlines()
    assert status == 1 and len(lines) == 1 and lines[0].startswith("daskseg: error: "), (status, err)
    assert path.name in lines[0], lines[0]


def check_cli(path: pathlib.Path, damaged, expected: np.ndarray, capsys) -> None:
    refuse_all = damaged.at_open or bool(damaged.frames)
    store = path.with_suffix(".cli.zarr")
    status, _, err = run_cli(["decode", str(path), "-o", str(store), "--threads", "1", "-q"],
                             capsys)
    if refuse_all or status != 0:
        assert_cli_refused(status, err, path)
    else:
        np.testing.assert_array_equal(zarr.open_array(str(store), mode="r")[:], expected)
    status, out, err = run_cli(["info", str(path)], capsys)
    if damaged.at_open or status != 0:
        assert_cli_refused(status, err, path)
    else:
        assert "segments:" in out and err == ""


def damaged_file(tmp_path, name, source_layout, case):
    damaged = CASES[case](source_layout)
    if damaged is None:
        pytest.skip(f"{case!r} does not apply to {name}")
    path = tmp_path / f"{name.removesuffix('.dcm')}-damaged.dcm"
    path.write_bytes(damaged.data)
    return path, damaged


@pytest.mark.timeout(30)
@pytest.mark.parametrize("case", list(CASES))
@pytest.mark.parametrize("name", [*SOURCES, *SHARED_SEGS])
def test_reader_api_on_damaged_file(request, tmp_path, sources, name, case):
    _, source_layout, expected = source_for(request, sources, name)
    path, damaged = damaged_file(tmp_path, name, source_layout, case)
    check_api(path, damaged, source_layout, expected)


# The CLI starts a cluster per call: run it on one native and one encapsulated SEG per case.
@pytest.mark.timeout(30)
@pytest.mark.parametrize("case", list(CASES))
@pytest.mark.parametrize("name", ["labelmap-native-full", "binary-j2k-sparse"])
def test_cli_on_damaged_file(request, tmp_path, sources, name, case, capsys):
    _, source_layout, expected = source_for(request, sources, name)
    path, damaged = damaged_file(tmp_path, name, source_layout, case)
    check_cli(path, damaged, expected, capsys)


def not_a_seg(request, tmp_path, name) -> pathlib.Path:
    content = NOT_A_SEG[name]
    if isinstance(content, str):
        path = request.getfixturevalue("testdata") / content
        if not path.exists():
            pytest.skip(f"{path} is absent")
        return path
    path = tmp_path / "not-a-seg.dcm"
    path.write_bytes(content)
    return path


@pytest.mark.timeout(30)
@pytest.mark.parametrize("name", list(NOT_A_SEG))
def test_not_a_seg_is_refused(request, tmp_path, name, capsys):
    path = not_a_seg(request, tmp_path, name)
    for read in (open_segmentation, read_segmentation):
        with pytest.raises(Exception) as caught, bounded_memory():
            read(path)
        assert_clean(caught.value, path)
    for argv in (["decode", str(path), "-o", str(tmp_path / "out.zarr"), "--threads", "1", "-q"],
                 ["info", str(path)]):
        status, _, err = run_cli(argv, capsys)
        assert_cli_refused(status, err, path)


@pytest.mark.timeout(120)
@pytest.mark.parametrize("case", [
    "garbage in a fragment", "BOT entries out of order", "cut in last frame",
    "NumberOfFrames one fewer",
])
def test_damaged_file_on_a_process_cluster(tmp_path, sources, dask_client, case):
    """The error of a worker's task reaches the caller as the same clean error."""
    name = "binary-j2k-sparse"
    _, source_layout, expected = sources[name]
    path, damaged = damaged_file(tmp_path, name, source_layout, case)
    with outcome(path, must_refuse=True):
        dask_client.compute(read_segmentation(path)).result()
    with outcome(path, must_refuse=True):
        open_segmentation(path).to_zarr(str(tmp_path / "out.zarr"), client=dask_client)
    region = source_layout.region_without(set(damaged.frames))
    if region is not None and not damaged.at_open:
        with outcome(path, must_refuse=False):
            got = dask_client.compute(read_segmentation(path)[region]).result()
            np.testing.assert_array_equal(got, expected[region])


READ_IN_A_PROCESS = textwrap.dedent("""
    import json, sys
    import dask
    from daskseg import read_segmentation

    for path in sys.argv[1:]:
        try:
            with dask.config.set(scheduler="synchronous"):
                read_segmentation(path).compute()
        except Exception as error:
            print(json.dumps({"type": type(error).__name__, "message": str(error)}), flush=True)
        else:
            print(json.dumps({"type": None}), flush=True)
""")


def htj2k_copy(path: pathlib.Path, folder: pathlib.Path) -> tuple[bytes, list[bytes]]:
    """A SEG's file with its frames re-encoded as HTJ2K, and those codestreams."""
    import imagecodecs
    import pydicom
    from pydicom.encaps import encapsulate

    from daskseg._codecs import CODECS, HTJ2KLossless

    dataset = pydicom.dcmread(path)
    codec = CODECS[str(dataset.file_meta.TransferSyntaxUID)]
    frames = [
        bytes(imagecodecs.htj2k_encode(
            np.asarray(codec.decode(frame, dataset.Rows, dataset.Columns, 8)).reshape(
                dataset.Rows, dataset.Columns),
            level=0, reversible=True))
        for frame in pydicom.encaps.generate_frames(
            dataset.PixelData, number_of_frames=int(dataset.NumberOfFrames))
    ]
    dataset.PixelData = encapsulate(frames, has_bot=True)
    dataset.file_meta.TransferSyntaxUID = HTJ2KLossless
    copy = folder / "htj2k.dcm"
    dataset.save_as(copy)
    return copy.read_bytes(), frames


# Bytes of a frame's codestream (ITU-T T.800 A.5.1: SIZ's YTsiz at 28-31, XOsiz at
# 16-19, Ssiz at 42) and what OpenJPH (imagecodecs.htj2k_decode) made of them.
HTJ2K_DAMAGE = {
    "YTsiz 0 (OpenJPH: SIGFPE)": (28, b"\0\0\0\0", "tiles of 0 x 32 pixels"),
    "XOsiz 2048 (OpenJPH: spins)": (18, b"\x08", "XOsiz 2048"),
    "YTsiz 31 (OpenJPH: other pixels)": (31, b"\x1f", "cannot be decoded"),
    "16-bit samples in an 8-bit SEG": (42, b"\x0f", "16-bit unsigned samples"),
}


@pytest.mark.timeout(60)
def test_a_damaged_htj2k_codestream_is_refused(tmp_path, sources):
    """A damaged HTJ2K frame is a SegmentationFileError naming the file and frame; it killed
    the reading process, spun forever, or read as other pixels through OpenJPH. The reads run
    in a process of their own, so that a crash fails this test only."""
    data, frames = htj2k_copy(sources["fractional-rle-full"][0], tmp_path)
    # The frame of most detail: an empty one decodes to zeros even with some such damage.
    index = max(range(len(frames)), key=lambda i: len(frames[i]))
    first = data.index(frames[index])
    paths = []
    for number, (offset, replacement, _) in enumerate(HTJ2K_DAMAGE.values()):
        damaged = bytearray(data)
        damaged[first + offset : first + offset + len(replacement)] = replacement
        paths.append(tmp_path / f"damaged-{number}.dcm")
        paths[-1].write_bytes(bytes(damaged))
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(
        [str(pathlib.Path(__file__).resolve().parents[1]), os.environ.get("PYTHONPATH", "")]
    ))
    try:
        run = subprocess.run([sys.executable, "-c", READ_IN_A_PROCESS, *map(str, paths)],
                             capture_output=True, text=True, timeout=50, env=env)
    except subprocess.TimeoutExpired as timeout:
        pytest.fail(f"a read did not end; it printed {timeout.stdout!r}")
    results = [json.loads(line) for line in run.stdout.splitlines()]
    assert run.returncode == 0 and len(results) == len(paths), (run.returncode, run.stderr[-500:])
    for (case, (_, _, says)), path, result in zip(HTJ2K_DAMAGE.items(), paths, results):
        assert result["type"] == "SegmentationFileError", (case, result)
        assert f"{path.name}: frame {index + 1} " in result["message"], (case, result)
        assert says in result["message"], (case, result)


def _no_compute(*args, **kwargs):
    raise AssertionError("a task ran")


def test_info_says_the_readers_words_once(tmp_path, sources, capsys):
    """A segment description without its category code: `daskseg info` wrapped the reader's
    SegmentationFileError in "the DICOM header is damaged ... (SegmentationFileError: <file>:
    ...)", naming the file twice; it says what decode says."""
    import pydicom

    dataset = pydicom.dcmread(sources["labelmap-jpegls-sparse"][0])
    del dataset.SegmentSequence[-1].SegmentedPropertyCategoryCodeSequence
    path = tmp_path / "nocategory.dcm"
    dataset.save_as(path)
    status, _, err = run_cli(["info", str(path)], capsys)
    assert status == 1
    assert "SegmentedPropertyCategoryCodeSequence" in err
    assert err.count(str(path)) == 1 and "SegmentationFileError" not in err


def test_many_segments_of_a_huge_grid_are_refused_before_their_index(tmp_path, sources):
    """A 20 KB header of 16 segments and 2^22 tiles each (within the grid limit per segment):
    opening allocated an index of 512 MiB (8 bytes a segment and tile)."""
    import copy
    import resource

    import pydicom

    dataset = pydicom.dcmread(sources["binary-j2k-sparse"][0])
    tile_rows, tile_columns = int(dataset.Rows), int(dataset.Columns)
    dataset.TotalPixelMatrixRows, dataset.TotalPixelMatrixColumns = (tile_rows * 2048,
                                                                      tile_columns * 2048)
    template = dataset.SegmentSequence[0]
    items = []
    for number in range(1, 17):
        item = copy.deepcopy(template)
        item.SegmentNumber = number
        items.append(item)
    dataset.SegmentSequence = items
    path = tmp_path / "huge.dcm"
    dataset.save_as(path)
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    with pytest.raises(SegmentationFileError, match="16 segments of 4194304 tiles each are more "
                                                    "frames than daskseg indexes"):
        open_segmentation(path)
    grown_mib = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 1024
    assert grown_mib < 64


def test_a_labelmap_padding_value_its_labels_cannot_hold_is_refused(tmp_path, sources):
    """PixelPaddingValue 65535 in an 8-bit LABELMAP: a SegmentationFileError before any work
    (it was numpy's OverflowError from each decode task of a combined read)."""
    import pydicom

    dataset = pydicom.dcmread(sources["labelmap-native-full"][0])
    assert dataset.BitsAllocated == 8
    dataset.PixelPaddingValue = 65535
    path = tmp_path / "padding.dcm"
    dataset.save_as(path)
    for combine_segments in (True, False):
        with dask.config.set(scheduler=_no_compute), pytest.raises(
            SegmentationFileError,
            match=f"{path.name}: PixelPaddingValue 65535 cannot be a label of a LABELMAP of "
                  "BitsAllocated 8, whose labels are 0 to 255",
        ):
            read_segmentation(path, combine_segments=combine_segments)


def test_a_labelmap_background_above_its_segment_numbers_sets_the_output_type(tmp_path,
                                                                               sources):
    """A 16-bit LABELMAP of segments 1-3 padded with 1000: read combined, labels not asked for
    (0 and 3) read as 1000, as in highdicom, so the output is uint16 (uint8 gave numpy's
    OverflowError)."""
    import pydicom

    source = sources["labelmap-native-full"][0]
    labels = read_all(source, combine_segments=True).astype(np.uint16)
    dataset = pydicom.dcmread(source)
    dataset.BitsAllocated = dataset.BitsStored = 16
    dataset.HighBit = 15
    stored = np.frombuffer(dataset.PixelData, np.uint8)
    dataset.PixelData = stored.astype("<u2").tobytes()
    dataset.PixelPaddingValue = 1000
    path = tmp_path / "padding.dcm"
    dataset.save_as(path)
    with dask.config.set(scheduler="synchronous"):
        got = read_segmentation(path, combine_segments=True, segment_numbers=[1, 2]).compute()
    assert got.dtype == np.uint16
    assert set(np.unique(labels)) == {0, 1, 2, 3}
    np.testing.assert_array_equal(got, np.where(np.isin(labels, [1, 2]), labels, 1000))


@pytest.mark.parametrize("name", ["labelmap-jpegls-sparse", "binary-j2k-sparse"])
@pytest.mark.parametrize(("change", "says"), [
    ("16 x 64 pixels", "decodes to an array of 16 x 64 values, not the header's Rows x "
                       "Columns, 32 x 32"),
    ("16-bit, label + 256", "decodes to values of type uint16, which BitsAllocated"),
])
def test_a_codestream_of_another_size_or_precision_is_refused(tmp_path, sources, name, change,
                                                              says):
    """A frame whose codestream holds as many pixels in another shape, or wider values, than
    the header says: it was reshaped (scrambling the tile) or cast (257 read as label 1)."""
    import pydicom
    from pydicom.encaps import encapsulate, generate_frames

    from daskseg._codecs import CODECS

    dataset = pydicom.dcmread(sources[name][0])
    rows, columns, bits = dataset.Rows, dataset.Columns, dataset.BitsAllocated
    codec = CODECS[str(dataset.file_meta.TransferSyntaxUID)]
    frames = list(generate_frames(dataset.PixelData, number_of_frames=int(dataset.NumberOfFrames)))
    index = max(range(len(frames)), key=lambda i: len(frames[i]))  # not an empty frame
    tile = np.asarray(codec.decode(frames[index], rows, columns, bits)).reshape(rows, columns)
    assert tile.any() and (rows, columns) == (32, 32)
    if change == "16 x 64 pixels":
        frames[index] = codec.encode(np.ascontiguousarray(tile.reshape(16, 64)), bits)
    else:
        wide = tile.astype(np.uint16)
        frames[index] = codec.encode(np.where(wide > 0, wide + 256, 0).astype(np.uint16), 16)
    dataset.PixelData = encapsulate(frames, has_bot=True)
    path = tmp_path / "changed.dcm"
    dataset.save_as(path)
    with pytest.raises(SegmentationFileError, match=f"{path.name}: frame {index + 1} {says}"):
        read_all(path)



def test_native_pixel_data_a_frame_longer_than_its_frames_is_refused(tmp_path, sources):
    """Native frames follow each other without a gap (PS3.5 8.1.1): Pixel Data a frame (or
    more) longer than NumberOfFrames x Rows x Columns needs has frames the header does not
    count, or of another size, and every frame was read from the wrong place without a word (a
    helper's hunt: Rows edited, a frame's item dropped). A pad byte to even length is kept."""
    import pydicom

    dataset = pydicom.dcmread(sources["labelmap-native-full"][0])
    frame = int(dataset.Rows) * int(dataset.Columns)
    dataset.PixelData = bytes(dataset.PixelData) + bytes(frame)
    path = tmp_path / "a-frame-more.dcm"
    dataset.save_as(path)
    with pytest.raises(SegmentationFileError, match=f"{path.name}: the Pixel Data holds "
                       rf"\d+ bytes, {frame} more than NumberOfFrames"):
        read_all(path)
    dataset.Rows = int(dataset.Rows) // 2  # its frames read as twice as many half frames
    dataset.PixelData = bytes(dataset.PixelData)[:-frame]
    dataset.save_as(path)
    with pytest.raises(SegmentationFileError, match="more frames than the header counts, or "
                                                    "frames of another size"):
        read_all(path)


def test_an_rle_frame_of_more_pixels_than_rows_x_columns_is_refused(tmp_path, sources):
    """An RLE segment is Rows x Columns bytes (PS3.5 G.2); a decoder that stops there read a
    frame of 32 x 33 pixels as the header's 32 x 32 (a helper's hunt)."""
    import pydicom
    from pydicom.encaps import encapsulate, generate_frames

    from daskseg._codecs import CODECS

    dataset = pydicom.dcmread(sources["fractional-rle-full"][0])
    codec = CODECS[str(dataset.file_meta.TransferSyntaxUID)]
    frames = list(generate_frames(dataset.PixelData, number_of_frames=int(dataset.NumberOfFrames)))
    wider = np.arange(32 * 33, dtype=np.uint8).reshape(32, 33)
    frames[1] = codec.encode(wider, 8)
    dataset.PixelData = encapsulate(frames, has_bot=True)
    path = tmp_path / "wider.dcm"
    dataset.save_as(path)
    with pytest.raises(SegmentationFileError, match=f"{path.name}: frame 2 cannot be decoded as "
                       "RLE Lossless .*an RLE segment decodes to 1056 bytes, not Rows x Columns "
                       "32 x 32 = 1024"):
        read_all(path)


def test_a_binary_codestream_of_values_above_1_is_refused(tmp_path, sources):
    """A BINARY JPEG 2000 frame whose codestream holds 0 and 255 (or 0..7), which no 1-bit
    pixel can: refused, not read as segment values of 255 (highdicom reads them so)."""
    import imagecodecs
    import pydicom
    from pydicom.encaps import encapsulate, generate_frames

    dataset = pydicom.dcmread(sources["binary-j2k-sparse"][0])
    frames = list(generate_frames(dataset.PixelData, number_of_frames=int(dataset.NumberOfFrames)))
    for values, highest in ((np.full((32, 32), 255, np.uint8), 255),
                            (np.tile(np.arange(8, dtype=np.uint8), (32, 4)), 7)):
        frames[0] = imagecodecs.jpeg2k_encode(values, level=0, codecformat="J2K",
                                              reversible=True, bitspersample=8)
        dataset.PixelData = encapsulate(frames, has_bot=True)
        path = tmp_path / f"values-{highest}.dcm"
        dataset.save_as(path)
        with pytest.raises(SegmentationFileError,
                           match=f"frame 1 decodes to values up to {highest}, where "
                                 "BitsAllocated 1 holds 0 and 1"):
            read_all(path)


@pytest.mark.parametrize("name", ["binary-j2k-sparse", "labelmap-jpegls-sparse"])
def test_encapsulated_pixel_data_under_a_native_syntax_is_refused(tmp_path, sources, name):
    """A file whose TransferSyntaxUID was changed to Explicit VR Little Endian without
    decoding its frames: the items' bytes were read as pixels (a noisy FRACTIONAL SEG read
    without an error). PS3.5 A.4: undefined length is for encapsulated Pixel Data only."""
    data = bytearray(pathlib.Path(sources[name][0]).read_bytes())
    for uid in (b"1.2.840.10008.1.2.4.90", b"1.2.840.10008.1.2.4.80"):
        at = data.find(uid, 0, 1024)  # in the file meta
        if at >= 0:
            data[at : at + len(uid)] = b"1.2.840.10008.1.2.1".ljust(len(uid), b"\0")
    path = tmp_path / "relabelled.dcm"
    path.write_bytes(bytes(data))
    import pydicom

    assert pydicom.dcmread(path, stop_before_pixels=True).file_meta.TransferSyntaxUID == (
        "1.2.840.10008.1.2.1")
    with pytest.raises(SegmentationFileError,
                       match="Pixel Data has undefined length, as encapsulated .* native"):
        open_segmentation(path)


def test_a_seg_through_a_pipe_is_said_to_be_one(tmp_path, sources, capsys):
    """A SEG given as /dev/stdin or a named pipe cannot be read in place: said so, not that
    it is not a DICOM file (its start was consumed by the first look)."""
    fifo = tmp_path / "seg.fifo"
    os.mkfifo(fifo)
    data = pathlib.Path(sources["labelmap-native-full"][0]).read_bytes()

    def feed():
        with contextlib.suppress(BrokenPipeError), open(fifo, "wb") as out:
            out.write(data)

    import threading

    feeder = threading.Thread(target=feed, daemon=True)
    feeder.start()
    assert main(["info", str(fifo)]) == 1
    assert "cannot be read in place (a pipe or a stream?)" in capsys.readouterr().err
    feeder.join(timeout=10)


@pytest.mark.parametrize(("url", "error", "says"), [
    ("dicomweb://host/dicom-web/studies/1/series/2/instances/3", SegmentationInputError,
     "no file system is known for URLs of scheme 'dicomweb'"),
    ("nosuchscheme://bucket/seg.dcm", SegmentationInputError,
     "no file system is known for URLs of scheme 'nosuchscheme'"),
])
def test_a_url_no_file_system_opens_is_refused(url, error, says):
    with pytest.raises(error, match=says):
        open_segmentation(url)


# --------------------------------------------------------------------------- property


def _mutation_sources(request, sources) -> dict:
    names = ["binary-native-full", "labelmap-jpegls-sparse", "fractional-rle-full"]
    found = {name: sources[name] for name in names}
    try:
        testdata = request.getfixturevalue("testdata")
    except pytest.skip.Exception:
        return found
    for name in ("seg_image_sm_control_labelmap.dcm", "seg_image_sm_dots.dcm"):
        if (testdata / name).exists():
            found[name] = source_for(request, sources, name)
    return found


@pytest.mark.timeout(300)
def test_mutated_and_truncated_files(request, tmp_path_factory, sources):
    """Random byte changes and cuts: daskseg's error, or an array of the declared shape, in
    bounded time and memory; a change inside the bytes of frames not read changes no value."""
    candidates = _mutation_sources(request, sources)
    folder = tmp_path_factory.mktemp("mutated")
    process = psutil.Process()
    baseline = process.memory_info().rss

    # No shrinking: it would rerun failing reads many times; the drawn example is printed.
    @settings(max_examples=50, deadline=None, derandomize=True, phases=[Phase.generate],
              suppress_health_check=[HealthCheck.too_slow])
    @given(data=st.data())
    def check(data):
        _, source, expected = candidates[data.draw(st.sampled_from(sorted(candidates)),
                                                   label="source")]
        original = source.data
        kind = data.draw(st.sampled_from(["truncate", "overwrite", "inside a frame"]), label="kind")
        frame = None
        if kind == "truncate":
            mutated = original[: data.draw(st.integers(0, len(original) - 1), label="cut")]
        else:
            if kind == "inside a frame":
                frame = data.draw(st.integers(0, source.n_frames - 1), label="frame")
                start, stop = source.frame_ranges[frame]
            else:
                start, stop = 0, len(original)
            at = data.draw(st.integers(start, stop - 1), label="at")
            new = data.draw(st.binary(min_size=1, max_size=min(8, stop - at)), label="bytes")
            mutated = original[:at] + new + original[at + len(new) :]
            if not source.encapsulated and kind == "inside a frame":
                # 1-bit native frames share their first and last bytes with their neighbours.
                if source.header.BitsAllocated == 1 and (at == start or at + len(new) >= stop):
                    frame = None
        path = folder / "mutated.dcm"
        path.write_bytes(mutated)
        began = time.monotonic()
        with dask.config.set(scheduler="synchronous"):
            try:
                with bounded_memory():
                    reader = open_segmentation(path)
                    got = read_segmentation(path).compute()
                    assert got.shape == reader.shape + got.shape[2:], (got.shape, reader.shape)
                    if frame is not None:
                        region = source.region_without({frame})
                        if region is not None:
                            # The damage is in a frame this region does not read.
                            part = read_segmentation(path)[region].compute()
                            np.testing.assert_array_equal(part, expected[region])
            except Exception as error:
                assert_clean(error, path)
        assert time.monotonic() - began < 20, "a damaged file took too long to refuse"
        assert process.memory_info().rss - baseline < 1024 * 2**20

    check()


# --------------------------------------------------------------------------- writer


WRITE_ON_FULL_DISK = textwrap.dedent("""
    import json, resource, signal, sys
    from distributed import Client
    from daskseg import write_segmentation
    from daskseg.synthetic import make_segment_descriptions, make_slide, make_tissue_mask

    mask = make_tissue_mask(256, 256, 3, chunks=128, stacked=True).astype("float32")
    source = make_slide(256, 256, tile_size=(64, 64))
    # A file-size limit: a write past it fails with EFBIG (SIGXFSZ ignored), as a full disk
    # fails with ENOSPC.
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    with Client(processes=False, n_workers=1, threads_per_worker=1, dashboard_address=None) as c:
        mask = mask.persist()
        for folder, limit in zip(sys.argv[1::2], sys.argv[2::2]):
            resource.setrlimit(resource.RLIMIT_FSIZE, (int(limit), resource.RLIM_INFINITY))
            try:
                write_segmentation(
                    mask, source, make_segment_descriptions(3, segmentation_type="FRACTIONAL"),
                    folder + "/seg.dcm", segmentation_type="FRACTIONAL",
                    dimension_organization_type="TILED_FULL", overwrite=True, client=c)
            except BaseException as error:
                print(json.dumps({"type": type(error).__name__,
                                  "oserror": isinstance(error, OSError),
                                  "errno": getattr(error, "errno", None), "message": str(error)}))
            else:
                print(json.dumps({"type": None}))
            finally:
                resource.setrlimit(resource.RLIMIT_FSIZE,
                                   (resource.RLIM_INFINITY, resource.RLIM_INFINITY))
""")


@pytest.mark.timeout(120)
def test_writer_on_a_full_disk(tmp_path):
    """A write that fails mid-way: a clear OSError, no temporary file left, the old file kept."""
    # Native FRACTIONAL 256 x 256 x 3 in 64 x 64 tiles: 196,608 bytes of frames. A limit of
    # 64 KiB stops the spool of encoded frames; one just under the finished file's size lets the
    # spool through and stops the file itself (its header and frames pass the limit). One
    # process runs both (starting one takes seconds).
    limits = {"spool": 65536, "final file": 196608 + 1024}
    existing = b"an existing file that must survive\n" * 10
    argv = []
    for where, limit in limits.items():
        (tmp_path / where).mkdir()
        (tmp_path / where / "seg.dcm").write_bytes(existing)
        argv += [str(tmp_path / where), str(limit)]
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(
        [str(pathlib.Path(__file__).resolve().parents[1]), os.environ.get("PYTHONPATH", "")]
    ))
    run = subprocess.run([sys.executable, "-c", WRITE_ON_FULL_DISK, *argv],
                         capture_output=True, text=True, timeout=110, env=env)
    assert run.returncode == 0, run.stderr
    results = [json.loads(line) for line in run.stdout.strip().splitlines()[-len(limits):]]
    for where, result in zip(limits, results):
        assert result["oserror"] and result["errno"] == errno.EFBIG, (where, result)
        assert sorted(os.listdir(tmp_path / where)) == ["seg.dcm"], where  # no temporary file
        assert (tmp_path / where / "seg.dcm").read_bytes() == existing, where


def test_errors_are_daskseg_errors():
    assert issubclass(SegmentationFileError, DaskSegError)
    assert issubclass(SegmentationFileError, ValueError)


def test_too_many_chunks_are_refused(sources, monkeypatch):
    """The lazy array's graph is bounded: more chunks than the cap is an error, not a hang."""
    import daskseg.read

    path = sources["binary-native-full"][0]  # a 2 x 3 grid of 32-pixel tiles
    monkeypatch.setattr(daskseg.read, "_MAX_CHUNKS", 4)
    with pytest.raises(SegmentationInputError, match="6 chunks"):
        read_segmentation(path, chunks=32)
    assert read_segmentation(path, chunks=64).numblocks[:2] == (1, 2)


@pytest.mark.parametrize(("case", "says"), [
    ("garbage in a fragment", "cannot be decoded as JPEG 2000"),
    ("cut in last frame", "is cut short"),
])
def test_error_names_the_frame(tmp_path, sources, case, says):
    _, source_layout, _ = sources["binary-j2k-sparse"]
    path, damaged = damaged_file(tmp_path, "binary-j2k-sparse", source_layout, case)
    (frame,) = damaged.frames
    with pytest.raises(SegmentationFileError, match=f"frame {frame + 1} {says}"):
        read_all(path)


@pytest.mark.parametrize("name", ["binary-j2k-sparse", "binary-native-full"])
@pytest.mark.parametrize("case", ["cut in file meta", "cut in header", "cut in per-frame items",
                                  "cut in pixel data element header", "cut in middle frame"])
def test_a_file_cut_short_is_said_to_be(tmp_path, sources, name, case):
    """pydicom ends a header quietly where a file stops between elements, and a cut Pixel Data
    loses its offset table's last frames: the message says the file is cut short, not that it
    is no SEG or that its offset table is wrong."""
    _, source_layout, _ = sources[name]
    path, _ = damaged_file(tmp_path, name, source_layout, case)
    with pytest.raises(SegmentationFileError, match="cut short") as caught:
        read_all(path)
    assert str(path.name) in str(caught.value)
