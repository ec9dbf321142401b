"""The file layout: Pixel Data, offset tables and frames in file order, written without a cluster."""

from __future__ import annotations

import io
import os
import pathlib
import struct

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydicom.encaps import encapsulate, generate_fragmented_frames, parse_basic_offsets
from pydicom.uid import ExplicitVRLittleEndian, JPEG2000Lossless

from _gathers import count_gathers
from daskseg._file import write_pixel_data
from daskseg._spool import Spool
from daskseg.encode import BlockResult
from daskseg.plan import FrameSpec, TileGrid


def arrive(spool, column, data):
    """A block of one frame, at tile (0, column), sent back to the client."""
    spool.add_block(BlockResult.of(0, column, np.ones((1, 1), bool), [(0, 0, column, data)], False))


def spool_of(tmp_path, frames):
    spool = Spool(tmp_path, "seg.dcm", (1, 1, len(frames)))
    spool.open()
    for column, data in enumerate(frames):
        arrive(spool, column, data)
    return spool


def pixel_data_written(tmp_path, to_disk, spool, order, spec, grid, extended, empty) -> bytes:
    """What write_pixel_data writes, to a file on disk or to memory; the spool is closed."""
    out = open(tmp_path / "out.bin", "w+b") if to_disk else io.BytesIO()
    with out:
        write_pixel_data(out, spool, order, spec, grid, False, extended, empty)
        out.seek(0)
        data = out.read()
    spool.close()
    return data


def test_one_bit_frames_are_packed_back_to_back(tmp_path):
    frames = [np.random.default_rng(k).integers(0, 2, (3, 3)).astype(np.uint8) for k in range(3)]
    spool = spool_of(tmp_path, [np.packbits(f.ravel(), bitorder="little").tobytes() for f in frames])
    spec = FrameSpec("BINARY", 1, False, 3, 3, str(ExplicitVRLittleEndian), 1, 255, False)
    out = io.BytesIO()
    order = np.array([[0, 0, 0], [0, 0, 1], [0, 0, 2]])
    write_pixel_data(out, spool, order, spec, TileGrid(3, 9, 3, 3), False, None, None)
    spool.close()
    value = out.getvalue()[12:]  # (7FE0,0010) OB: tag, VR, reserved, length
    expected = np.packbits(np.concatenate([f.ravel() for f in frames]), bitorder="little")
    assert value == expected.tobytes() + b"\x00" * (len(value) - len(expected))
    assert len(value) % 2 == 0
    (length,) = struct.unpack("<I", out.getvalue()[8:12])
    assert length == len(value)


@pytest.mark.parametrize("extended", [None, True])
def test_encapsulated_frames_one_fragment_each_with_offsets(tmp_path, extended):
    data = [b"abc", b"defg", b"h"]
    spool = spool_of(tmp_path, data)
    spec = FrameSpec("BINARY", 1, False, 32, 32, str(JPEG2000Lossless), 1, 255, False)
    out = io.BytesIO()
    order = np.array([[0, 0, 0], [0, 0, 1], [0, 0, 2]])
    write_pixel_data(out, spool, order, spec, TileGrid(32, 96, 32, 32), False, extended, None)
    spool.close()
    out.seek(0)
    offsets = [0, 12, 24]  # each item: 8-byte header and the frame padded to even length
    if extended:
        group, element, vr, _, length = struct.unpack("<HH2sHI", out.read(12))
        assert (group, element, vr, length) == (0x7FE0, 0x0001, b"OV", 24)
        assert np.frombuffer(out.read(24), "<u8").tolist() == offsets
        out.read(12)
        assert np.frombuffer(out.read(24), "<u8").tolist() == [3, 4, 1]
    out.read(12)  # (7FE0,0010) OB, undefined length
    start = out.tell()
    assert parse_basic_offsets(out) == ([] if extended else offsets)
    out.seek(start)
    got = [b"".join(f) for f in generate_fragmented_frames(out, number_of_frames=3)]
    assert got == [b"abc\x00", b"defg", b"h\x00"]


@pytest.mark.parametrize("to_disk", [True, False])
def test_encapsulated_frames_of_several_blocks_equal_pydicoms_encapsulation(tmp_path, to_disk):
    # Blocks of several frames arrive out of order; in file order, a run of frames read at once
    # spans a block's frames of one segment; one frame never arrives (written as the empty one).
    rng = np.random.default_rng(1)
    frames = {(channel, column): rng.bytes(int(rng.integers(1, 40)))
              for channel in range(2) for column in range(6) if (channel, column) != (1, 4)}
    spool = Spool(tmp_path, "seg.dcm", (2, 1, 6))
    spool.open()
    for first in (3, 0):  # two blocks of three tiles, each with both segments' frames
        block = [(channel, 0, column, frames[channel, column])
                 for channel in range(2) for column in range(first, first + 3)
                 if (channel, column) in frames]
        spool.add_block(BlockResult.of(0, first, np.ones((1, 3), bool), block, False))
    empty = b"empty"
    order = np.argwhere(np.ones((2, 1, 6), dtype=bool))
    spec = FrameSpec("BINARY", 2, False, 32, 32, str(JPEG2000Lossless), 1, 255, False)
    data = pixel_data_written(tmp_path, to_disk, spool, order, spec, TileGrid(32, 192, 32, 32),
                              False, empty)
    expected = [frames.get((channel, column), empty) for channel, _, column in order.tolist()]
    assert data[12:] == encapsulate(expected, has_bot=True) + struct.pack("<HHI", 0xFFFE, 0xE0DD, 0)


@pytest.mark.parametrize("case", ["small batches", "short writes", "one long run"])
def test_encapsulated_frames_gathered_into_few_writes(tmp_path, monkeypatch, case):
    # Items go to the file many at a time (os.writev): batches that end inside a run of
    # frames, writes that stop short of what they were given, and a run of more items than
    # one writev takes (IOV_MAX, 1024 buffers on Linux) still leave every byte once.
    import daskseg._file

    n_frames, block = (40, 20) if case != "one long run" else (600, 600)
    if case != "one long run":
        monkeypatch.setattr(daskseg._file, "_GATHER_PARTS", 5)
        monkeypatch.setattr(daskseg._file, "_IOV_MAX", 4)  # a run's 60 parts take 15 calls
    if case == "short writes":
        writev = os.writev

        def short(fd, buffers):  # at most 7 bytes a call, as a write a signal interrupts
            return writev(fd, [b"".join(bytes(b) for b in buffers)[:7]])

        monkeypatch.setattr(os, "writev", short)
    rng = np.random.default_rng(2)
    frames = [rng.bytes(int(rng.integers(1, 30))) for _ in range(n_frames)]
    spool = Spool(tmp_path, "seg.dcm", (1, 1, n_frames))
    spool.open()
    for first in range(n_frames - block, -1, -block):  # blocks arrive last first
        block_frames = [(0, 0, column, frames[column]) for column in range(first, first + block)]
        spool.add_block(BlockResult.of(0, first, np.ones((1, block), bool), block_frames, False))
    order = np.argwhere(np.ones((1, 1, n_frames), dtype=bool))
    spec = FrameSpec("BINARY", 1, False, 32, 32, str(JPEG2000Lossless), 1, 255, False)
    data = pixel_data_written(tmp_path, True, spool, order, spec,
                              TileGrid(32, 32 * n_frames, 32, 32), False, None)
    assert data[12:] == encapsulate(frames, has_bot=True) + struct.pack("<HHI", 0xFFFE, 0xE0DD, 0)


def test_numpy_tasks_carry_only_their_own_block_and_cover_the_mask():
    import dask

    from daskseg._spool import numpy_encode_tasks

    mask = (np.arange(100 * 90) % 7).astype(np.uint8).reshape(100, 90)
    spec = FrameSpec("LABELMAP", 6, False, 16, 16, "1.2.840.10008.1.2.1", 8, 255, False)
    tasks = numpy_encode_tasks(mask, (64, 36), (48, 42), spec)
    padded = np.zeros((112, 96), np.uint8)
    for n_frames, task in tasks:
        assert task.data.size <= 64 * 48
        result = dask.compute(task.make(task.data), scheduler="synchronous")[0][0, 0]
        assert len(result.lengths) == n_frames
        for (_, row, column), frame in zip(result.positions, result.data.reshape(-1, 16, 16)):
            padded[row * 16 : row * 16 + 16, column * 16 : column * 16 + 16] = frame
    np.testing.assert_array_equal(padded[:100, :90], mask)


@pytest.mark.parametrize("to_disk", [True, False])
def test_native_frames_are_copied_in_file_order_with_missing_ones_filled(tmp_path, to_disk):
    rng = np.random.default_rng(0)
    frames = [rng.integers(0, 255, (4, 4)).astype(np.uint8) for _ in range(6)]
    spool = Spool(tmp_path, "seg.dcm", (1, 1, 7))
    spool.open()
    # Arrival order differs from file order; frame 6 never arrives (an omitted empty frame).
    for column in (2, 3, 0, 1, 5, 4):
        arrive(spool, column, frames[column].tobytes())
    spec = FrameSpec("LABELMAP", 255, False, 4, 4, str(ExplicitVRLittleEndian), 8, 255, False)
    order = np.array([[0, 0, k] for k in range(7)])
    empty = bytes(16)
    data = pixel_data_written(tmp_path, to_disk, spool, order, spec, TileGrid(4, 28, 4, 4),
                              None, empty)
    pixels = np.frombuffer(data[12:], np.uint8)  # after tag, VR, reserved and 32-bit length
    assert struct.unpack("<I", data[8:12])[0] == 7 * 16
    np.testing.assert_array_equal(pixels.reshape(7, 4, 4), np.stack(frames + [np.zeros((4, 4), np.uint8)]))


def test_a_block_is_sent_back_when_its_worker_has_no_spool_file(tmp_path):
    from daskseg.encode import spool_block

    result = BlockResult.of(0, 0, np.ones((1, 1), bool), [(0, 0, 0, b"abcd")], False)
    # Outside a worker, and for a prefix whose file nobody prepared: the frames stay in it.
    assert spool_block(result, str(tmp_path / ".x.")).spooled is None
    assert result.data.tobytes() == b"abcd"
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("hidden", [0, 1])
def test_workers_on_this_machine_spool_their_frames_and_every_file_goes(tmp_path, dask_client,
                                                                       monkeypatch, hidden):
    """A process LocalCluster's workers write their frames beside the destination; a worker
    that cannot open the file made for it (``hidden``: as if it saw another container's folder
    at that path) sends its frames to the client instead. The SEG holds every frame, and no
    spool file is left."""
    import highdicom as hd

    import daskseg._spool as spool_module
    from daskseg import write_segmentation
    from daskseg.synthetic import make_ct_series, make_label_volume, make_segment_descriptions

    sent_back, spooled = [], []
    prepare, add_block = spool_module.Spool.prepare_workers, spool_module.Spool.add_block

    def prepare_and_hide(self, addresses):
        prepare(self, addresses)
        for path in self._prepared[:hidden]:
            os.unlink(path)

    def counting(self, result):
        (spooled if result.spooled is not None else sent_back).append(result.lengths.size)
        return add_block(self, result)

    monkeypatch.setattr(spool_module.Spool, "prepare_workers", prepare_and_hide)
    monkeypatch.setattr(spool_module.Spool, "add_block", counting)
    labels, series = make_label_volume(48, 32, 32, 3), make_ct_series(48, 32, 32)
    path = write_segmentation(labels, series, make_segment_descriptions(3),
                              tmp_path / "seg.dcm", client=dask_client)
    assert any(spooled)
    assert any(sent_back) == bool(hidden)  # with one file hidden, one worker each way
    assert [p.name for p in tmp_path.iterdir()] == ["seg.dcm"]
    pixels = hd.seg.segread(path).get_pixels_by_source_instance(
        [ds.SOPInstanceUID for ds in series], combine_segments=True,
        assert_missing_frames_are_empty=True)
    np.testing.assert_array_equal(pixels, labels)


def test_the_writer_gathers_its_results_up_to_eight_blocks_at_a_time(tmp_path, dask_client,
                                                                     monkeypatch):
    """Each gather is a round trip that costs the client's CPU, which the codecs on the same
    cores lose: 64 blocks on two workers took 32 gathers. Few blocks are still gathered one
    per worker thread at a time, for the progress bar."""
    import zarr

    from daskseg import write_segmentation
    from daskseg.synthetic import make_detailed_mask, make_segment_descriptions, make_slide

    labels = make_detailed_mask(2048, 2048, 2, chunks=256).compute()
    mask = zarr.create_array(str(tmp_path / "mask.zarr"), shape=labels.shape, chunks=(256, 256),
                             dtype=labels.dtype)
    mask[:] = labels
    for tile, blocks, most in ((32, 64, 9), (128, 16, 8)):
        gathers = count_gathers(monkeypatch, dask_client)
        write_segmentation(mask, make_slide(2048, 2048, tile_size=(tile, tile)),
                           make_segment_descriptions(2), tmp_path / "seg.dcm", tile_size=tile,
                           client=dask_client, overwrite=True)
        monkeypatch.undo()
        assert sum(gathers) == blocks and len(gathers) <= most, gathers
        # Several gathers, not one at the end (the progress bar moves with them). How many
        # depends on how the blocks finish: as_completed hands over every block finished
        # since the last look, and CI once saw 7 gathers of 64 blocks ([8, 10, 8, 8, 8, 20, 2]).
        assert len(gathers) >= min(4, blocks // 8), gathers


@pytest.mark.parametrize("made", ["spool", "worker's spool", "temporary file"])
def test_an_interruption_as_a_file_is_made_leaves_no_file(tmp_path, dask_client, monkeypatch,
                                                          made):
    """A signal's exception (SIGTERM in the CLI) that came as ``os.open`` returned left the file
    it had just made: its descriptor and name never reached the code that removes them. CI saw
    a worker's spool file left so."""
    from daskseg import write_segmentation
    from daskseg.synthetic import make_ct_series, make_label_volume, make_segment_descriptions

    real_open, opened = os.open, []

    def open_then_interrupted(path, flags, *args, **kwargs):
        handle = real_open(path, flags, *args, **kwargs)
        name = os.path.basename(path)
        kind = ("temporary file" if name.endswith(".tmp") else
                "worker's spool" if "tcp_" in name else "spool" if name.endswith(".spool")
                else None)
        if kind == made:
            opened.append(name)
            os.close(handle)
            raise KeyboardInterrupt  # as the handler raises at the call's return
        return handle

    labels, series = make_label_volume(8, 16, 16, 2), make_ct_series(8, 16, 16)
    monkeypatch.setattr(os, "open", open_then_interrupted)
    with pytest.raises(KeyboardInterrupt):
        write_segmentation(labels, series, make_segment_descriptions(2), tmp_path / "seg.dcm",
                           client=dask_client)
    monkeypatch.undo()
    assert opened and list(tmp_path.iterdir()) == []


def _header(syntax, character_set="ISO_IR 192"):
    from pydicom.dataset import Dataset, FileMetaDataset

    header = Dataset()
    header.file_meta = FileMetaDataset()
    header.file_meta.TransferSyntaxUID = syntax
    header.file_meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.66.4"
    header.file_meta.MediaStorageSOPInstanceUID = "1.2.3.4"
    if character_set:
        header.SpecificCharacterSet = character_set
    header.SOPClassUID, header.SOPInstanceUID = "1.2.840.10008.5.1.4.1.1.66.4", "1.2.3.4"
    header.PatientName = "Müller^Jürgen" if character_set else "Mueller^Juergen"
    header.PixelRepresentation = 0
    header.SmallestImagePixelValue = 0  # an ambiguous VR (US or SS) that pydicom resolves
    segments = []
    for number in range(1, 4):
        segment = Dataset()
        segment.SegmentNumber = number
        segment.SegmentLabel = f"Segment {number} ({'größer' if character_set else 'gross'})"
        segments.append(segment)
    header.SegmentSequence = segments
    sources = []
    for k in range(5):
        source = Dataset()
        source.ReferencedSOPClassUID = "1.2.840.10008.5.1.4.1.1.2"
        source.ReferencedSOPInstanceUID = f"1.2.3.{k}"
        sources.append(source)
    header.SourceImageSequence = sources
    return header


@pytest.mark.parametrize("syntax", [ExplicitVRLittleEndian, "1.2.840.10008.1.2"])
@pytest.mark.parametrize("character_set", ["ISO_IR 192", None])
def test_sequences_serialized_ahead_are_written_as_pydicom_writes_them(syntax, character_set):
    import pydicom

    from daskseg._file import SequencesAhead, _write_body

    expected, written = io.BytesIO(), io.BytesIO()
    pydicom.dcmwrite(expected, _header(syntax, character_set), enforce_file_format=True)
    header = _header(syntax, character_set)
    ahead = SequencesAhead(header, ("SegmentSequence", "SourceImageSequence", "ContentSequence"))
    _write_body(written, header, ahead)
    assert written.getvalue() == expected.getvalue()
    # pydicom wrote the serialized bytes as they were: it parses a raw sequence it re-encodes.
    assert header.get_item("SegmentSequence").is_raw
    assert header.get_item("SourceImageSequence").is_raw
    read = pydicom.dcmread(io.BytesIO(written.getvalue()))
    assert read.SegmentSequence[2].SegmentLabel.startswith("Segment 3 (gr")


def test_a_sequence_changed_after_it_was_serialized_is_written_anew():
    import pydicom
    from pydicom.dataset import Dataset

    from daskseg._file import SequencesAhead, _write_body

    header = _header(ExplicitVRLittleEndian)
    ahead = SequencesAhead(header, ("SegmentSequence", "SourceImageSequence"))
    extra = Dataset()
    extra.SegmentNumber = 4
    header.SegmentSequence.append(extra)  # grown
    header.SourceImageSequence = header.SourceImageSequence[:2]  # replaced
    written = io.BytesIO()
    _write_body(written, header, ahead)
    read = pydicom.dcmread(io.BytesIO(written.getvalue()))
    assert [item.SegmentNumber for item in read.SegmentSequence] == [1, 2, 3, 4]
    assert len(read.SourceImageSequence) == 2


POSITIONS = [(0.0, 0.0, 0.0), (12.5, -3.25, 0.0), (1e-7, 123456789.123456, -0.000123456789),
             (20.123456789012345, 7.0, 1.5e-12), (-1e10, 3.0000000000000004, 42)]


@pytest.mark.parametrize("implicit", [False, True])
def test_plane_positions_built_directly_equal_highdicoms_through_pydicom(implicit):
    import highdicom as hd
    from pydicom.dataset import Dataset

    from daskseg._header import slide_position_part
    from daskseg._volume import _position_part

    for k, position in enumerate(POSITIONS):
        slide = Dataset()
        slide.add_new(0x0048021A, "SQ", hd.PlanePositionSequence(
            hd.CoordinateSystemNames.SLIDE, image_position=position,
            pixel_matrix_position=(k * 512 + 1, k * 1024 + 1)))
        assert slide_position_part(position, (k * 512 + 1, k * 1024 + 1), implicit) == \
            _pydicom_bytes(slide, implicit)
        patient = Dataset()
        patient.add_new(0x00209113, "SQ", hd.PlanePositionSequence(
            hd.CoordinateSystemNames.PATIENT, image_position=position))
        assert _position_part(position, implicit) == _pydicom_bytes(patient, implicit)


# ------------------------------------------------------------------ plain elements, encoded directly

def _pydicom_bytes(dataset, implicit):
    """What pydicom's own write_dataset writes: the oracle of encoded_elements."""
    from pydicom.filebase import DicomBytesIO
    from pydicom.filewriter import write_dataset

    buffer = DicomBytesIO()
    buffer.is_little_endian, buffer.is_implicit_VR = True, implicit
    write_dataset(buffer, dataset)
    return buffer.getvalue()


_ASCII_TEXT = st.text(st.characters(min_codepoint=32, max_codepoint=126, exclude_characters="\\"),
                      max_size=9)
_WORDS = st.text("ABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789 _", max_size=9)
# (tag, VR, values): single-valued tags take a value, multi-valued ones (VM 1-n) a list.
_PLAIN_ELEMENTS = [
    (0x00080060, "CS", _WORDS), (0x00080008, "CS", st.lists(_WORDS, min_size=2, max_size=4)),
    (0x00080018, "UI", st.from_regex(r"1\.2(\.[1-9][0-9]{0,8}){0,5}", fullmatch=True)),
    (0x00080054, "AE", st.lists(_WORDS, max_size=3)), (0x00101010, "AS", st.just("042Y")),
    (0x0008010E, "UR", st.just("http://dicom.nema.org/")),
    (0x00620005, "LO", _ASCII_TEXT), (0x00081080, "LO", st.lists(_ASCII_TEXT, max_size=3)),
    (0x00080050, "SH", _ASCII_TEXT), (0x00080081, "ST", _ASCII_TEXT),
    (0x00080108, "LT", st.text(st.characters(min_codepoint=32, max_codepoint=126), max_size=9)),
    (0x00080119, "UC", _ASCII_TEXT), (0x0008030E, "UT", _ASCII_TEXT),
    (0x00080012, "DA", st.sampled_from(["", "20261126"])),
    (0x00080013, "TM", st.sampled_from(["", "1200", "235959.123"])),
    (0x00080015, "DT", st.sampled_from(["", "20261126120000"])),
    (0x00101020, "DS", st.floats(-1e12, 1e12, allow_nan=False)),
    (0x00082130, "DS", st.lists(st.floats(-1e6, 1e6, allow_nan=False), max_size=4)),
    (0x00082122, "IS", st.integers(-2**31, 2**31 - 1)),
    (0x00081160, "IS", st.lists(st.integers(0, 10**6), max_size=4)),
    (0x00000100, "US", st.integers(0, 2**16 - 1)),
    (0x00100028, "US", st.lists(st.integers(0, 2**16 - 1), min_size=3, max_size=3)),
    (0x00041200, "UL", st.integers(0, 2**32 - 1)), (0x00189219, "SS", st.integers(-2**15, 2**15 - 1)),
    (0x00186020, "SL", st.integers(-2**31, 2**31 - 1)),
    (0x00089459, "FL", st.floats(width=32, allow_nan=False)),
    (0x00186054, "FD", st.lists(st.floats(allow_nan=False), max_size=3)),
    (0x0008040C, "UV", st.integers(0, 2**64 - 1)),
    (0x00720082, "SV", st.lists(st.integers(-2**63, 2**63 - 1), max_size=2)),
]
_SEQUENCE_TAGS = [0x00620002, 0x00081115, 0x0008114A, 0x00082112]


@st.composite
def _plain_datasets(draw, depth=0):
    from pydicom.dataset import Dataset
    from pydicom.valuerep import DS

    dataset = Dataset()
    for tag, vr, values in draw(st.lists(st.sampled_from(_PLAIN_ELEMENTS), max_size=8)):
        value = draw(values)
        if vr == "DS":  # as highdicom gives them: at most 16 characters
            value = ([DS(v, auto_format=True) for v in value] if isinstance(value, list)
                     else DS(value, auto_format=True))
        dataset.add_new(tag, vr, value)
    if depth < 2:
        for tag in draw(st.lists(st.sampled_from(_SEQUENCE_TAGS), max_size=2, unique=True)):
            dataset.add_new(tag, "SQ", draw(st.lists(_plain_datasets(depth + 1), max_size=3)))
    return dataset


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(dataset=_plain_datasets(), implicit=st.booleans())
def test_plain_elements_are_encoded_as_pydicom_writes_them(dataset, implicit):
    import warnings

    from daskseg._header import encoded_elements, encoded_items

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # pydicom warns of values it still writes (CS case)
        expected = _pydicom_bytes(dataset, implicit)
    assert encoded_elements(dataset, implicit) == expected
    for element in dataset.iterall():
        if element.VR == "SQ":
            holder = type(dataset)()
            holder.add(element)
            header_length = 8 if implicit else 12
            assert encoded_items(element.value, implicit) == \
                _pydicom_bytes(holder, implicit)[header_length:]


@pytest.mark.parametrize("odd", ["PatientName", "RecordKey", "non-ASCII", "raw", "ambiguous",
                                  "undefined length", "out of range"])
def test_elements_that_are_not_plain_are_left_to_pydicom(odd):
    from pydicom.dataelem import RawDataElement
    from pydicom.dataset import Dataset
    from pydicom.tag import Tag

    from daskseg._header import encoded_elements, serialize

    dataset = Dataset()
    dataset.Modality = "SEG"
    if odd == "PatientName":
        dataset.PatientName = "Doe^John"
    elif odd == "RecordKey":
        dataset.add_new(0x0008041B, "OB", b"\x01\x02")
    elif odd == "non-ASCII":
        dataset.SegmentLabel = "Leber groß"
    elif odd == "raw":
        dataset[0x00620005] = RawDataElement(Tag(0x00620005), "LO", 4, b"Lung", 0, False, True)
    elif odd == "ambiguous":
        dataset.add_new(0x00280106, "US or SS", 0)  # SmallestImagePixelValue
    elif odd == "undefined length":
        dataset.SegmentSequence = [Dataset()]
        dataset["SegmentSequence"].is_undefined_length = True
    else:
        with pytest.warns(UserWarning, match="between 0 and 65535"):
            dataset.add_new(0x00620004, "US", 70000)  # SegmentNumber: more than 16 bits
        assert encoded_elements(dataset, False) is None
        with pytest.raises(OSError):  # pydicom's own error, as before
            serialize(dataset, False)
        return
    assert encoded_elements(dataset, False) is None
    dataset.PixelRepresentation = 0  # resolves the ambiguous VR, as pydicom does on writing
    assert serialize(dataset, False) == _pydicom_bytes(dataset, False)


@pytest.mark.parametrize("implicit", [False, True])
@pytest.mark.parametrize("segmentation_type", ["BINARY", "LABELMAP"])
def test_a_volume_headers_sequences_are_encoded_as_pydicom_writes_them(implicit,
                                                                       segmentation_type):
    """highdicom's 117 segments and the references to a series of 40 slices."""
    import highdicom as hd
    from pydicom.filebase import DicomFileLike
    from pydicom.filewriter import write_sequence

    from daskseg._header import encoded_items
    from daskseg._inputs import WriteOptions
    from daskseg._series import load_source_series
    from daskseg._volume import _header_parts
    from daskseg.plan import FrameSpec
    from daskseg.synthetic import make_ct_series, make_segment_descriptions

    series = load_source_series(make_ct_series(40, 32, 32))
    descriptions = make_segment_descriptions(117, segmentation_type=segmentation_type)
    options = dict(segment_descriptions=descriptions, segmentation_type=segmentation_type,
                   series_instance_uid=hd.UID(), series_number=1, sop_instance_uid=hd.UID(),
                   instance_number=1, manufacturer="m", manufacturer_model_name="m",
                   software_versions="1", device_serial_number="1",
                   transfer_syntax_uid="1.2.840.10008.1.2.1")
    syntax = ExplicitVRLittleEndian
    spec = FrameSpec(segmentation_type, 117, False, 32, 32, syntax,
                     1 if segmentation_type == "BINARY" else 8, 255, True)
    write_options = WriteOptions(segmentation_type, syntax, None, True, 255, None)
    header, _, _ = _header_parts(series, False, np.dtype(np.uint8), options,
                                 series.sort_index(), spec, write_options)
    for keyword in ("ReferencedSeriesSequence", "SegmentSequence", "SourceImageSequence"):
        buffer = io.BytesIO()
        out = DicomFileLike(buffer)
        out.is_little_endian, out.is_implicit_VR = True, implicit
        write_sequence(out, header[keyword], ["ISO_IR 192"])
        assert encoded_items(header[keyword].value, implicit) == buffer.getvalue(), keyword


def test_workers_on_another_address_send_their_frames_packed(tmp_path, monkeypatch,
                                                             outward_host):
    """Workers that are not on this machine's loopback get no spool file: their frames come
    back through the network, native ones LZ4-compressed, as the mask went to them."""
    import highdicom as hd
    from distributed import Client, LocalCluster

    import daskseg._spool as spool_module
    from daskseg import write_segmentation
    from daskseg._pack import PackedBlock
    from daskseg.synthetic import make_ct_series, make_label_volume, make_segment_descriptions

    arrived = []
    add_block = spool_module.Spool.add_block

    def recording(self, result):
        packed = isinstance(result.data, PackedBlock)
        arrived.append((result.spooled, packed or result.data.size == 0))
        return add_block(self, result)

    monkeypatch.setattr(spool_module.Spool, "add_block", recording)
    labels, series = make_label_volume(64, 256, 256, 5), make_ct_series(64, 256, 256)
    with LocalCluster(n_workers=2, threads_per_worker=1, host=outward_host,
                      dashboard_address=None, memory_limit="2GiB") as cluster, \
            Client(cluster) as client:
        path = write_segmentation(labels, series,
                                  make_segment_descriptions(5, segmentation_type="LABELMAP"),
                                  tmp_path / "seg.dcm", segmentation_type="LABELMAP",
                                  client=client)
    assert arrived and arrived == [(None, True)] * len(arrived)  # packed, or without frames
    assert [p.name for p in tmp_path.iterdir()] == ["seg.dcm"]
    pixels = hd.seg.segread(path).get_pixels_by_source_instance(
        [ds.SOPInstanceUID for ds in series], combine_segments=True,
        assert_missing_frames_are_empty=True)
    np.testing.assert_array_equal(pixels, labels)


def _old_and_new_stores(folder):
    """A store "labels.zarr" and the finished one to replace it, hidden beside it."""
    destination, partial = folder / "labels.zarr", folder / ".labels.zarr.1234.partial"
    for store, content in ((destination, "old"), (partial, "new")):
        store.mkdir()
        (store / "zarr.json").write_text(content)
    return destination, partial


def test_a_finished_store_replaces_the_old_one_which_survives_a_failed_rename(tmp_path,
                                                                                monkeypatch):
    """The old store was removed before the new one was renamed in: an interruption between
    the two lost both. It is renamed aside now, and put back if the rename fails."""
    from daskseg._file import replace_tree

    destination, partial = _old_and_new_stores(tmp_path)
    (destination / "c").mkdir()
    real_rename = pathlib.Path.rename

    def failing(self, target):
        if self == partial:
            raise KeyboardInterrupt
        return real_rename(self, target)

    monkeypatch.setattr(pathlib.Path, "rename", failing)
    with pytest.raises(KeyboardInterrupt):
        replace_tree(partial, destination)
    assert (destination / "zarr.json").read_text() == "old"
    monkeypatch.setattr(pathlib.Path, "rename", real_rename)
    replace_tree(partial, destination)
    assert (destination / "zarr.json").read_text() == "new"
    assert sorted(path.name for path in tmp_path.iterdir()) == ["labels.zarr"]


@pytest.mark.parametrize("interrupted", ["old set aside", "new put in place"])
def test_an_interruption_as_a_store_is_renamed_leaves_one_whole_store(tmp_path, monkeypatch,
                                                                       interrupted):
    """A signal's exception that came as the old store's rename returned, before the try that
    puts it back, left it under its hidden name and no store at the destination."""
    from daskseg._file import replace_tree

    destination, partial = _old_and_new_stores(tmp_path)
    real_rename = pathlib.Path.rename

    def renamed_then_interrupted(self, target):
        result = real_rename(self, target)
        if (self == destination) == (interrupted == "old set aside"):
            raise KeyboardInterrupt
        return result

    monkeypatch.setattr(pathlib.Path, "rename", renamed_then_interrupted)
    with pytest.raises(KeyboardInterrupt):
        replace_tree(partial, destination)
    monkeypatch.undo()
    expected = "old" if interrupted == "old set aside" else "new"
    assert (destination / "zarr.json").read_text() == expected
    left = {path.name for path in tmp_path.iterdir()}
    assert left == ({"labels.zarr", partial.name} if expected == "old" else {"labels.zarr"})


def test_a_file_that_appeared_is_never_replaced_without_overwrite(tmp_path):
    from daskseg import DestinationExistsError
    from daskseg._file import replace_atomically

    temporary, destination = tmp_path / ".seg.tmp", tmp_path / "seg.dcm"
    temporary.write_bytes(b"new")
    destination.write_bytes(b"theirs")
    with pytest.raises(DestinationExistsError, match="appeared while writing"):
        replace_atomically(temporary, destination, overwrite=False)
    assert destination.read_bytes() == b"theirs"
    destination.unlink()
    replace_atomically(temporary, destination, overwrite=False)
    assert destination.read_bytes() == b"new" and not temporary.exists()


def test_a_spool_that_cannot_be_removed_does_not_hide_the_writes_error(tmp_path, monkeypatch):
    """The folder made read-only (or removed) under a write: Spool.close's PermissionError
    about a hidden spool file replaced the error that stopped the write."""
    spool = Spool(tmp_path, "seg.dcm", (1, 1, 1))
    spool.open()

    def refused(path, *args, **kwargs):
        raise PermissionError(13, "Permission denied", str(path))

    monkeypatch.setattr(os, "unlink", refused)
    with pytest.raises(RuntimeError, match="the write's own error"):
        try:
            raise RuntimeError("the write's own error")
        finally:
            spool.close()


def test_a_full_disk_names_the_destinations_folder(tmp_path):
    """ENOSPC from the spool or the file named nothing ('[Errno 28] No space left on
    device'): now the folder and the SEG, still an OSError of that errno."""
    import errno

    from daskseg._file import naming_a_full_disk

    destination = tmp_path / "seg.dcm"
    with pytest.raises(OSError, match="no room to write the SEG seg.dcm") as caught:
        with naming_a_full_disk(destination):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
    assert caught.value.errno == errno.ENOSPC and caught.value.filename == str(tmp_path)
    with pytest.raises(FileNotFoundError):  # other errors as they are
        with naming_a_full_disk(destination):
            raise FileNotFoundError(errno.ENOENT, "gone", "x")


@pytest.mark.parametrize("seed", range(4))
def test_tile_positions_equal_highdicoms_to_the_last_bit(seed):
    """The plane positions of TILED_SPARSE items, kept as arrays: highdicom's values exactly."""
    from highdicom.spatial import compute_tile_positions_per_frame

    from daskseg._header import tile_positions

    rng = np.random.default_rng(seed)
    first = rng.normal(size=3)
    first /= np.linalg.norm(first)
    second = np.cross(first, rng.normal(size=3))
    second /= np.linalg.norm(second)
    orientation = [*first.tolist(), *second.tolist()]
    position = rng.normal(size=3).tolist()
    spacing = rng.uniform(0.0001, 1, 2).tolist()
    grid = TileGrid(int(rng.integers(1, 40000)), int(rng.integers(1, 40000)), 256, 200)
    expected = compute_tile_positions_per_frame(
        grid.tile_rows, grid.tile_columns, grid.rows, grid.columns, position, orientation, spacing)
    offsets, coordinates = tile_positions(grid, position, orientation, spacing)
    assert list(zip(offsets.tolist(), coordinates.tolist())) == expected


def test_a_destination_folder_removed_during_a_write_is_said_so(tmp_path):
    """The bare error named a hidden file of the spool; now the folder, and what happened."""
    from daskseg._file import naming_a_full_disk

    destination = tmp_path / "gone" / "seg.dcm"
    with pytest.raises(FileNotFoundError, match="folder was removed while") as raised:
        with naming_a_full_disk(destination):
            raise FileNotFoundError(2, "No such file", str(destination.parent / ".seg.dcm.x.tmp"))
    assert raised.value.filename == str(destination.parent)
    (tmp_path / "here").mkdir()
    with pytest.raises(FileNotFoundError, match="No such file"):  # another file's: as it was
        with naming_a_full_disk(tmp_path / "here" / "seg.dcm"):
            raise FileNotFoundError(2, "No such file", "elsewhere")


@pytest.mark.parametrize("at_call", [1, 2, 3])
def test_an_interrupt_while_the_spool_closes_leaves_none_of_its_files(tmp_path, monkeypatch,
                                                                      at_call):
    """A Ctrl-C that came while the spool removed its files (caught twice in 250 random
    interrupts of writes) left the client's and the workers' spool files beside the SEG,
    their descriptors open. It is raised once every file is closed and removed."""
    import daskseg._spool

    spool = Spool(tmp_path, "seg.dcm", (1, 1, 2), worker_prefix=str(tmp_path / ".seg.dcm.w"))
    spool.open()
    spool.prepare_workers(["tcp://127.0.0.1:1", "tcp://127.0.0.1:2"])
    descriptors = list(spool.sources)
    assert len(list(tmp_path.iterdir())) == 3
    unlink, calls = os.unlink, []

    def interrupted_unlink(path):
        calls.append(path)
        if len(calls) == at_call:
            raise KeyboardInterrupt  # as a signal's handler raises it, where Python waits
        unlink(path)

    monkeypatch.setattr(daskseg._spool.os, "unlink", interrupted_unlink)
    with pytest.raises(KeyboardInterrupt):
        spool.close()
    monkeypatch.undo()
    assert list(tmp_path.iterdir()) == []
    for descriptor in descriptors:  # closed (the number may be another file's by now)
        try:
            target = os.readlink(f"/proc/self/fd/{descriptor}")
        except OSError:
            continue
        assert str(tmp_path) not in target
    spool.close()  # again: nothing left to do
