"""One table of the transfer syntaxes daskseg writes and reads: each one's encoder and decoder.

Adding a transfer syntax is one entry of :data:`CODECS`: the writer, the reader, the CLI's short
names and :data:`ALLOWED_TRANSFER_SYNTAXES` all take what they need from here (pydicom keeps a
registry of encoders and decoders per UID in the same way). Encoders and decoders run on the
workers: numpy and codecs only, imported when first used.
"""

from __future__ import annotations

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
    # A contiguous copy first: given a strided view (a tile of a block, a segment's plane of a
    # stack), imagecodecs' encoders wrote codestreams that pydicom could not decode, now and
    # then, under a cluster's threads (HTJ2K: 2 of 8 runs of the volume tests).
    return bytes(imagecodecs.jpeg2k_encode(
        np.ascontiguousarray(frame),
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


def _encode_htj2k(frame: np.ndarray, bits_allocated: int) -> bytes:
    import imagecodecs

    # High-Throughput JPEG 2000 (Part 15), lossless: about 3x faster to encode than JPEG 2000
    # (Part 1) on detailed label frames. imagecodecs writes a raw codestream, as DICOM wants.
    # A contiguous copy first, as for JPEG 2000.
    return bytes(imagecodecs.htj2k_encode(np.ascontiguousarray(frame), level=0, reversible=True))


def _decode_htj2k(data: bytes, rows: int, columns: int, bits_allocated: int) -> np.ndarray:
    import imagecodecs

    return imagecodecs.htj2k_decode(data)


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

    return np.frombuffer(
        rle.decode_pixel_data(
            data, version=2, rows=rows, columns=columns, bits_allocated=bits_allocated,
            samples_per_pixel=1,
        ),
        frame_dtype(bits_allocated).newbyteorder("<"),
    )


@dataclass(frozen=True)
class Codec:
    """How frames of one transfer syntax are encoded and decoded, and where it may be used."""

    uid: str
    names: tuple[str, ...]  # the CLI's short names
    segmentation_types: frozenset[str]  # where the syntax may be used (all lossless)
    encode: Callable[[np.ndarray, int], bytes]  # (frame, bits allocated) -> bytes
    decode: Callable[[bytes, int, int, int], np.ndarray]  # (bytes, rows, columns, bits)
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
