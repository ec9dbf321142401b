"""The file layout: Pixel Data, offset tables and frames in file order, written without a cluster."""

from __future__ import annotations

import io
import struct

import numpy as np
import pytest
from pydicom.encaps import generate_fragmented_frames, parse_basic_offsets
from pydicom.uid import ExplicitVRLittleEndian, JPEG2000Lossless

from daskseg._file import write_pixel_data
from daskseg._spool import Spool
from daskseg.plan import FrameSpec, TileGrid


def spool_of(tmp_path, frames):
    spool = Spool(tmp_path, "seg.dcm", (1, 1, len(frames)))
    for column, data in enumerate(frames):
        spool.add(0, 0, column, data)
    return spool


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
