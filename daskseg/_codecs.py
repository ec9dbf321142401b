"""One table of the transfer syntaxes daskseg writes and reads: each one's encoder and decoder.

Adding a transfer syntax is one entry of :data:`CODECS`: the writer, the reader, the CLI's short
names and :data:`ALLOWED_TRANSFER_SYNTAXES` all take what they need from here (pydicom keeps a
registry of encoders and decoders per UID in the same way). Encoders and decoders run on the
workers: numpy and codecs only, imported when first used.
"""

from __future__ import annotations

import os
import struct
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
if TYPE_CHECKING:
    from pydicom.uid import UID

# The UIDs as plain strings: workers import this module to encode, and importing pydicom (for
# its UID class) would cost each of them 13 MB for nothing (PS3.5 A.4 lists the syntaxes).
ExplicitVRLittleEndian = "1.2.840.10008.1.2.1"
ImplicitVRLittleEndian = "1.2.840.10008.1.2"
JPEG2000Lossless = "1.2.840.10008.1.2.4.90"
HTJ2KLossless = "1.2.840.10008.1.2.4.201"
JPEGLSLossless = "1.2.840.10008.1.2.4.80"
RLELossless = "1.2.840.10008.1.2.5"

__all__ = ["ALLOWED_TRANSFER_SYNTAXES", "CODECS", "Codec", "codec_for", "pack_bits", "unpack_bits"]

_ALL_TYPES = frozenset({"BINARY", "FRACTIONAL", "LABELMAP"})


def frame_dtype(bits_allocated: int) -> np.dtype:
    """The dtype of a frame's stored values (1-bit frames unpack to uint8)."""
    return np.dtype(np.uint16 if bits_allocated == 16 else np.uint8)


def pack_bits(frame: np.ndarray) -> bytes:
    """One 1-bit frame packed on its own, LSB first (PS3.5 8.1.1 and D.2).

    The writer joins frames without padding between them, shifting bits where a frame does not
    fill whole bytes; :func:`unpack_bits` reads a frame that starts mid-byte.
    """
    return np.packbits(frame.ravel(), bitorder="little").tobytes()


def unpack_bits(data: bytes, start: int, rows: int, columns: int) -> np.ndarray:
    """The 1-bit frame of ``rows`` x ``columns`` starting at bit ``start`` of ``data``."""
    bits = np.unpackbits(np.frombuffer(data, np.uint8), bitorder="little")
    return bits[start : start + rows * columns].reshape(rows, columns)


def _encode_native(frame: np.ndarray, bits_allocated: int) -> bytes:
    if bits_allocated == 1:
        return pack_bits(frame)
    return frame.astype(frame.dtype.newbyteorder("<"), copy=False).tobytes()


def _decode_native(data: bytes, rows: int, columns: int, bits_allocated: int) -> np.ndarray:
    # 1-bit frames may start mid-byte: the frame index hands them to unpack_bits itself.
    return np.frombuffer(data, frame_dtype(bits_allocated).newbyteorder("<")).reshape(rows, columns)


def _encode_jpeg2k(frame: np.ndarray, bits_allocated: int) -> bytes:
    import imagecodecs

    # imagecodecs releases the GIL and is faster than highdicom's pydicom/pylibjpeg path;
    # a J2K codestream (not JP2), reversible 5/3 wavelet: lossless, as 1.2.840.10008.1.2.4.90.
    # imagecodecs makes a strided view (a tile of a block) contiguous itself.
    return bytes(imagecodecs.jpeg2k_encode(
        frame,
        level=0,
        codecformat="J2K",
        reversible=True,
        bitspersample=bits_allocated if bits_allocated > 1 else 1,
        mct=False,
        numthreads=1,
    ))  # bytes() returns a bytes result itself, without a copy


def _decode_jpeg2k(data: bytes, rows: int, columns: int, bits_allocated: int) -> np.ndarray:
    import imagecodecs

    return imagecodecs.jpeg2k_decode(data, numthreads=1)


#: Taken by the first HTJ2K encode of a process, see _encode_htj2k.
_htj2k_first_encode = threading.Lock()
_htj2k_tables_filled = False


def _new_lock_after_fork() -> None:
    # A process forked while another thread held the lock would otherwise wait for it forever.
    global _htj2k_first_encode
    _htj2k_first_encode = threading.Lock()


os.register_at_fork(after_in_child=_new_lock_after_fork)


def _encode_htj2k(frame: np.ndarray, bits_allocated: int) -> bytes:
    import imagecodecs

    # High-Throughput JPEG 2000 (Part 15), lossless: about 3x faster to encode than JPEG 2000
    # (Part 1) on detailed label frames. imagecodecs writes a raw codestream, as DICOM wants.
    global _htj2k_tables_filled
    if not _htj2k_tables_filled:
        # OpenJPH before 0.27 (imagecodecs 2026.3 has 0.26.3) fills its block coder's tables
        # in a process's first encode without a lock: a second thread's first encode clears
        # them under the first one, whose codestream then cannot be decoded (OpenJPH #243).
        # So the first encode of each process runs alone; the others need no lock.
        with _htj2k_first_encode:
            if not _htj2k_tables_filled:
                codestream = bytes(imagecodecs.htj2k_encode(frame, level=0, reversible=True))
                _htj2k_tables_filled = True
                return codestream
    return bytes(imagecodecs.htj2k_encode(frame, level=0, reversible=True))


#: ITU-T T.800 A.5.1: SOC, then SIZ's Lsiz, Rsiz, Xsiz, Ysiz, XOsiz, YOsiz, XTsiz, YTsiz,
#: XTOsiz, YTOsiz, Csiz, and Ssiz, XRsiz, YRsiz of the first component.
_SIZ = struct.Struct(">4sHHIIIIIIIIHBBB")


def _check_siz(data: bytes, rows: int, columns: int, bits_allocated: int) -> None:
    """Raise ValueError unless a codestream's SIZ marker describes a SEG frame of the header.

    PS3.5 8.2: the codestream's size and precision are those of the header's Columns, Rows and
    Bits Stored, one unsigned component; a SEG frame has no image or tile offsets.
    """
    if len(data) < _SIZ.size:
        raise ValueError(f"it is {len(data)} bytes long, too short for a codestream's header")
    (markers, length, _, width, height, x_offset, y_offset, tile_width, tile_height,
     tile_x_offset, tile_y_offset, components, depth, x_step, y_step) = _SIZ.unpack_from(data)
    if markers != b"\xff\x4f\xff\x51":
        raise ValueError("it does not start with a codestream's SOC and SIZ markers")
    if components != 1 or length != 41:
        raise ValueError(f"its SIZ marker describes {components} components (length {length}), "
                         "not the one of a SEG's frames")
    if (width, height) != (columns, rows):
        raise ValueError(f"its SIZ marker says {height} x {width} pixels, not the header's "
                         f"Rows x Columns, {rows} x {columns}")
    if x_offset or y_offset or tile_x_offset or tile_y_offset:
        raise ValueError(f"its SIZ marker has offsets XOsiz {x_offset}, YOsiz {y_offset}, "
                         f"XTOsiz {tile_x_offset}, YTOsiz {tile_y_offset}; a SEG frame's are 0")
    if not tile_width or not tile_height:
        raise ValueError(f"its SIZ marker says tiles of {tile_height} x {tile_width} pixels "
                         "(YTsiz x XTsiz), which no codestream has")
    if (x_step, y_step) != (1, 1):
        raise ValueError(f"its SIZ marker subsamples the component by {y_step} x {x_step}")
    precision = (depth & 0x7F) + 1
    if depth & 0x80 or precision > bits_allocated:
        kind = "signed" if depth & 0x80 else "unsigned"
        raise ValueError(f"its SIZ marker says {precision}-bit {kind} samples, where BitsAllocated "
                         f"is {bits_allocated} (unsigned)")


def _decode_htj2k(data: bytes, rows: int, columns: int, bits_allocated: int) -> np.ndarray:
    # OpenJPEG (jpeg2k_decode reads Part 15 codestreams too), not OpenJPH (htj2k_decode), about
    # 1.6-2x slower a frame: OpenJPH let damaged codestreams kill the process (SIGFPE, SIGSEGV),
    # spin forever, or decode to other pixels (its errors are swallowed by imagecodecs), where
    # OpenJPEG, as pydicom and highdicom through pylibjpeg-openjpeg, refuses them.
    _check_siz(data, rows, columns, bits_allocated)
    return _decode_jpeg2k(data, rows, columns, bits_allocated)


def _encode_jpegls(frame: np.ndarray, bits_allocated: int) -> bytes:
    import imagecodecs

    frame = np.ascontiguousarray(frame)
    try:
        return bytes(imagecodecs.jpegls_encode(frame, level=0))
    except imagecodecs.JpeglsError:
        # imagecodecs sizes its output buffer for compressible frames; CharLS's output of a
        # noisy one (a probability map, random labels) is larger than the frame, and CharLS
        # then stops: again with room for twice the frame.
        return bytes(imagecodecs.jpegls_encode(frame, level=0, out=2 * frame.nbytes + 4096))


def _decode_jpegls(data: bytes, rows: int, columns: int, bits_allocated: int) -> np.ndarray:
    import imagecodecs

    return imagecodecs.jpegls_decode(data)


def _encode_rle(frame: np.ndarray, bits_allocated: int) -> bytes:
    # highdicom's frame encoder (pydicom with the pylibjpeg-rle plugin).
    from highdicom.frame import encode_frame

    return encode_frame(
        np.ascontiguousarray(frame),
        transfer_syntax_uid=RLELossless,
        bits_allocated=bits_allocated,
        bits_stored=bits_allocated,
        photometric_interpretation="MONOCHROME2",
        pixel_representation=0,
    )


def _decode_rle(data: bytes, rows: int, columns: int, bits_allocated: int) -> np.ndarray:
    import rle

    if bits_allocated in (8, 16):
        return _decode_rle_segments(data, rows, columns, bits_allocated)
    return np.frombuffer(
        rle.decode_pixel_data(
            data, version=2, rows=rows, columns=columns, bits_allocated=bits_allocated,
            samples_per_pixel=1,
        ),
        frame_dtype(bits_allocated).newbyteorder("<"),
    ).reshape(rows, columns)  # RLE has no shape of its own (PS3.5 G.3): the header's


def _decode_rle_segments(data: bytes, rows: int, columns: int, bits_allocated: int) -> np.ndarray:
    """An RLE frame of one sample, each of its byte segments decoded whole (PS3.5 G.2, most
    significant first) and required to be Rows x Columns bytes: a decoder that stops there (as
    G.3.1 describes) takes a frame of another size for this one, without a word."""
    from rle.rle import decode_segment

    if len(data) < 64:
        raise ValueError(f"the RLE frame is {len(data)} bytes, shorter than its 64-byte header")
    header = struct.unpack_from("<16I", data)
    count = header[0]
    if count != bits_allocated // 8:
        raise ValueError(f"the RLE frame has {count} segments, not {bits_allocated // 8} for "
                         f"{bits_allocated}-bit pixels of one sample")
    ends = [*header[1 : 1 + count], len(data)]
    if any(not 64 <= a <= b <= len(data) for a, b in zip(ends, ends[1:])):
        raise ValueError(f"the RLE header's segment offsets {list(header[1:1 + count])} do not "
                         f"fit the frame's {len(data)} bytes")
    pixels = rows * columns
    segments = []
    for a, b in zip(ends, ends[1:]):
        segment = decode_segment(data[a:b])
        # A pad byte at a segment's end (to even length) may decode to one byte more.
        if not pixels <= len(segment) <= pixels + 1:
            raise ValueError(f"an RLE segment decodes to {len(segment)} bytes, not Rows x "
                             f"Columns {rows} x {columns} = {pixels}: the frame is of another "
                             "size, or damaged")
        segments.append(np.frombuffer(segment, np.uint8, count=pixels))
    if bits_allocated == 8:
        return segments[0].reshape(rows, columns)
    frame = (segments[0].astype(np.uint16) << 8) | segments[1]
    return frame.reshape(rows, columns)


@dataclass(frozen=True)
class Codec:
    """How frames of one transfer syntax are encoded and decoded, and where it may be used."""

    uid: str
    names: tuple[str, ...]  # the CLI's short names
    segmentation_types: frozenset[str]  # where the syntax may be used (all lossless)
    encode: Callable[[np.ndarray, int], bytes]  # (frame, bits allocated) -> bytes
    # (bytes, rows, columns, bits) -> the codestream's own shape and type, checked by the reader
    decode: Callable[[bytes, int, int, int], np.ndarray]
    min_tile: int = 1  # the smallest frame side the encoder takes

    @property
    def encapsulated(self) -> bool:
        return self.uid not in (ExplicitVRLittleEndian, ImplicitVRLittleEndian)


#: Every transfer syntax daskseg writes and reads, keyed by UID, in the order offered to users.
CODECS: dict[str, Codec] = {
    codec.uid: codec
    for codec in (
        Codec(ExplicitVRLittleEndian, ("native", "explicit"), _ALL_TYPES,
              _encode_native, _decode_native),
        Codec(ImplicitVRLittleEndian, ("implicit",), _ALL_TYPES, _encode_native, _decode_native),
        # OpenJPEG refuses frames smaller than 32 x 32 in practice (highdicom's limit too).
        Codec(JPEG2000Lossless, ("jpeg2000", "j2k"), _ALL_TYPES, _encode_jpeg2k, _decode_jpeg2k,
              min_tile=32),
        # Not BINARY: imagecodecs' HTJ2K encoder has no 1-bit precision, so its codestream
        # would disagree with Bits Stored 1 (PS3.5 8.2.1: they must match).
        Codec(HTJ2KLossless, ("htj2k",), frozenset({"FRACTIONAL", "LABELMAP"}),
              _encode_htj2k, _decode_htj2k),
        Codec(JPEGLSLossless, ("jpegls",), frozenset({"FRACTIONAL", "LABELMAP"}),
              _encode_jpegls, _decode_jpegls),
        Codec(RLELossless, ("rle",), frozenset({"FRACTIONAL", "LABELMAP"}),
              _encode_rle, _decode_rle),
    )
}

def __getattr__(name: str) -> Any:
    # ALLOWED_TRANSFER_SYNTAXES holds pydicom UIDs (with .name, .is_encapsulated): made when
    # first asked for, so that workers, which never ask, need not import pydicom.
    if name == "ALLOWED_TRANSFER_SYNTAXES":
        from pydicom.uid import UID

        allowed: dict[str, tuple[UID, ...]] = {
            kind: tuple(UID(uid) for uid, codec in CODECS.items()
                        if kind in codec.segmentation_types)
            for kind in ("BINARY", "FRACTIONAL", "LABELMAP")
        }
        globals()[name] = allowed
        return allowed
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


#: Transfer syntaxes per segmentation type, as highdicom 0.28 allows them (all lossless), plus
#: HTJ2K, which highdicom reads but does not write (made when first used, see __getattr__).
ALLOWED_TRANSFER_SYNTAXES: dict[str, tuple[UID, ...]]


def codec_for(transfer_syntax_uid: str) -> Codec | None:
    """The codec of a transfer syntax UID, or None when daskseg has none for it.

    Examples
    --------
    >>> codec_for("1.2.840.10008.1.2.4.90").names
    ('jpeg2000', 'j2k')
    >>> codec_for("1.2.840.10008.1.2.4.50") is None  # JPEG Baseline: lossy
    True
    """
    return CODECS.get(str(transfer_syntax_uid))
