"""The codec table: every transfer syntax encodes and decodes frames losslessly (no cluster)."""

from __future__ import annotations

import numpy as np
import pytest
from pydicom.uid import ExplicitVRLittleEndian, JPEG2000Lossless, JPEGBaseline8Bit, UID

from daskseg import ALLOWED_TRANSFER_SYNTAXES
from daskseg._codecs import CODECS, codec_for, pack_bits, unpack_bits
from daskseg.cli import TRANSFER_SYNTAXES


@pytest.mark.parametrize("uid", list(CODECS), ids=[UID(u).name for u in CODECS])
@pytest.mark.parametrize("bits", [8, 16])
def test_every_codec_decodes_what_it_encodes(uid, bits):
    codec = CODECS[uid]
    rows, columns = 40, 48  # JPEG 2000 needs 32 x 32 at least
    dtype = np.uint8 if bits == 8 else np.uint16
    frame = np.random.default_rng(bits).integers(0, 2**bits - 1, (rows, columns)).astype(dtype)
    frame[:8] = 0  # some runs for RLE
    data = codec.encode(frame, bits)
    assert isinstance(data, bytes)
    decoded = np.asarray(codec.decode(data, rows, columns, bits)).reshape(rows, columns)
    np.testing.assert_array_equal(decoded, frame)


@pytest.mark.parametrize("uid", list(CODECS), ids=[UID(u).name for u in CODECS])
@pytest.mark.parametrize("bits", [8, 16])
def test_a_frame_of_noise_encodes(uid, bits):
    """Noise does not compress (a probability map's, random labels'): JPEG-LS's output is then
    larger than the frame, more than imagecodecs makes room for by default."""
    dtype = np.uint8 if bits == 8 else np.uint16
    frame = np.random.default_rng(0).integers(0, 2**bits, (128, 128), dtype=dtype)
    data = CODECS[uid].encode(frame, bits)
    decoded = np.asarray(CODECS[uid].decode(data, 128, 128, bits)).reshape(128, 128)
    np.testing.assert_array_equal(decoded, frame)


@pytest.mark.parametrize("uid", list(CODECS), ids=[UID(u).name for u in CODECS])
@pytest.mark.parametrize("bits", [8, 16])
def test_a_tile_view_of_a_block_encodes_as_its_copy(uid, bits):
    """Frames are views of a block's tiles (rows of the block apart): each encoder takes them
    as they are, or copies them, to the bytes of the contiguous frame."""
    dtype = np.uint8 if bits == 8 else np.uint16
    block = np.random.default_rng(bits).integers(0, 2**bits - 1, (96, 112)).astype(dtype)
    view = block[40:80, 48:96]
    assert not view.flags.c_contiguous
    assert CODECS[uid].encode(view, bits) == CODECS[uid].encode(view.copy(), bits)


@pytest.mark.parametrize("start", [0, 3, 7])
def test_one_bit_frames_unpack_from_any_bit(start):
    frame = np.random.default_rng(start).integers(0, 2, (5, 7)).astype(np.uint8)
    # The frame placed after ``start`` bits of another, as the writer joins them.
    bits = np.concatenate([np.ones(start, np.uint8), frame.ravel()])
    data = np.packbits(bits, bitorder="little").tobytes()
    np.testing.assert_array_equal(unpack_bits(data, start, 5, 7), frame)
    assert unpack_bits(pack_bits(frame), 0, 5, 7).tolist() == frame.tolist()


def test_allowed_syntaxes_come_from_the_table():
    assert ALLOWED_TRANSFER_SYNTAXES["BINARY"] == tuple(
        uid for uid, codec in CODECS.items() if "BINARY" in codec.segmentation_types)
    assert set(ALLOWED_TRANSFER_SYNTAXES["LABELMAP"]) == set(CODECS)
    assert JPEG2000Lossless in ALLOWED_TRANSFER_SYNTAXES["BINARY"]


def test_cli_names_come_from_the_table():
    assert TRANSFER_SYNTAXES["native"] == ExplicitVRLittleEndian
    assert set(TRANSFER_SYNTAXES.values()) == {str(uid) for uid in CODECS}


def test_a_syntax_without_a_codec_has_none():
    assert codec_for(JPEGBaseline8Bit) is None
    assert codec_for(str(JPEG2000Lossless)) is CODECS[JPEG2000Lossless]
