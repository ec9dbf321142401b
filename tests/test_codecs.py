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


# A fresh process: the first encodes of each codec from eight threads at once.
FIRST_ENCODES_AT_ONCE = """
import threading
import numpy as np
from daskseg._codecs import CODECS
bad = []
for uid, codec in CODECS.items():
    bits = 8
    frames = [np.random.default_rng(k).integers(0, 6, (256, 256), dtype=np.uint8)
              for k in range(8)]
    codestreams = [None] * 8
    barrier = threading.Barrier(8)
    def encode(k):
        barrier.wait()
        codestreams[k] = [codec.encode(frames[k], bits) for _ in range(3)]
    threads = [threading.Thread(target=encode, args=(k,)) for k in range(8)]
    [thread.start() for thread in threads]
    [thread.join() for thread in threads]
    for frame, encoded in zip(frames, codestreams):
        for data in encoded:
            try:
                decoded = np.asarray(codec.decode(data, 256, 256, bits)).reshape(256, 256)
                equal = np.array_equal(decoded, frame)
            except Exception:
                equal = False
            if not equal:
                bad.append(uid)
print(sorted(set(bad)))
"""


def test_first_encodes_of_a_process_in_threads_decode_equal():
    """A worker's threads start encoding at once. OpenJPH 0.26 (imagecodecs' HTJ2K encoder)
    filled its tables in the first encode without a lock, and a second thread cleared them
    under it: now and then a codestream that no decoder read (3 in 1,200 fresh processes of
    four threads, 8 in 2,000 of eight; the first HTJ2K test of a pytest process failed so, in
    local runs). This run catches that only now and then; the lock in _encode_htj2k is what
    keeps it away."""
    import subprocess
    import sys

    run = subprocess.run([sys.executable, "-c", FIRST_ENCODES_AT_ONCE],
                         capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr
    assert run.stdout.strip() == "[]"


# A fresh process forks while the first HTJ2K encode's lock is held (by another thread, or
# here by the forking one); the child then encodes. It exits 3 if it waited 20 s.
FORK_DURING_FIRST_ENCODE = """
import os, signal
import numpy as np
from daskseg import _codecs
_codecs._htj2k_first_encode.acquire()
pid = os.fork()
if pid == 0:
    signal.alarm(20)
    signal.signal(signal.SIGALRM, lambda *_: os._exit(3))
    frame = np.arange(64 * 64, dtype=np.uint8).reshape(64, 64)
    data = _codecs._encode_htj2k(frame, 8)
    equal = np.array_equal(_codecs._decode_htj2k(data, 64, 64, 8), frame)
    os._exit(0 if equal else 1)
print(os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1]))
"""


def test_a_process_forked_during_the_first_htj2k_encode_encodes():
    import subprocess
    import sys

    run = subprocess.run([sys.executable, "-c", FORK_DURING_FIRST_ENCODE],
                         capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr
    assert run.stdout.strip() == "0"


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
