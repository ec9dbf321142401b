"""Frames -> the values of highdicom's ``get_total_pixel_matrix``. Runs on the workers.

A task gets the references of its own frames (from the frame index), takes their bytes from its
source (a file's byte ranges, or WADO-RS frame requests: any ``_frames.FrameSource``), decodes
them with the codec table's decoders and writes each tile of its chunk, so slicing
the lazy array decodes only the chunks it touches (of whole tiles: ``chunks=`` the tile size
for only the frames it touches).
"""

from __future__ import annotations

import errno
import functools
import os
import threading
from dataclasses import dataclass
from typing import Any

import numpy as np
from pydicom.uid import UID

from daskseg._codecs import CODECS, unpack_bits
from daskseg.errors import SegmentationFileError, SegmentationInputError
from daskseg.plan import allowed_labels, block_location
from daskseg._frames import FrameLayout, FrameRef, FrameSource

__all__ = ["FrameRef", "Output", "read_chunk", "read_planes", "store_block"]

# Codestreams shorter than this that decode to one value (an empty frame, or one wholly inside
# a segment) are decoded once per process: their values are remembered, not their pixels.
_SMALL_CODESTREAM = 4096
_MAX_UNIFORM = 256  # codestreams remembered per process
_uniform_values: dict[tuple[FrameLayout, bytes], Any] = {}
_uniform_lock = threading.Lock()


def decode_frame(layout: FrameLayout, data: bytes, index: int) -> np.ndarray:
    """A frame's stored values from its bytes; ``index`` places a native 1-bit frame's bits."""
    rows, columns = layout.rows, layout.columns
    if layout.native:
        if layout.bits_allocated == 1:
            # PS3.5 8.1.1: frames are packed back to back; this one starts mid-byte when
            # earlier frames did not fill whole bytes.
            return unpack_bits(data, index * rows * columns % 8, rows, columns)
        return np.frombuffer(data, layout.dtype.newbyteorder("<")).reshape(rows, columns)
    codec = CODECS[str(layout.transfer_syntax_uid)]  # keyed by plain strings
    array = np.asarray(codec.decode(data, rows, columns, layout.bits_allocated))
    # PS3.5 8.2: a codestream's size and precision are the header's. One that says otherwise
    # would be reshaped (scrambling the tile) or cast (wrapping labels) without these checks.
    if array.shape != (rows, columns):
        raise _DamagedFrame(
            f"decodes to an array of {' x '.join(map(str, array.shape))} values, not the "
            f"header's Rows x Columns, {rows} x {columns}: the file is damaged."
        )
    if array.dtype.kind not in "ub" or array.dtype.itemsize > layout.dtype.itemsize:
        raise _DamagedFrame(
            f"decodes to values of type {array.dtype}, which BitsAllocated "
            f"{layout.bits_allocated} (unsigned) cannot hold: the file is damaged."
        )
    if layout.bits_allocated == 1 and array.size and array.max() > 1:
        # A 1-bit frame's values are 0 and 1. Its codestream's precision does not tell: highdicom
        # writes BINARY JPEG 2000 frames of 2-bit precision.
        raise _DamagedFrame(
            f"decodes to values up to {int(array.max())}, where BitsAllocated 1 holds 0 and 1: "
            "the file is damaged."
        )
    return np.asarray(array, dtype=layout.dtype)


def _decode_small(layout: FrameLayout, data: bytes) -> tuple[np.ndarray, bool]:
    """Decode a short codestream, and say whether any pixel is non-zero; one that decodes to a
    single value is decoded once per process.

    Empty frames, and frames wholly inside one segment, compress to the same few bytes all over
    a slide; decoding them again and again would take most of the time. Only their value is
    kept: a cache of the pixels of every short codestream held the frames of earlier SEGs on
    each worker (64 MiB of 512² frames over a pipeline's cases).
    """
    key = (layout, data)
    value = _uniform_values.get(key)
    if value is not None:
        return _filled(layout, value), bool(value)
    array = decode_frame(layout, data, 0)  # encapsulated frames decode alike wherever they are
    flat = array.reshape(-1)
    if flat.size and flat.min() == flat.max():
        with _uniform_lock:
            if len(_uniform_values) >= _MAX_UNIFORM:
                _uniform_values.clear()
            _uniform_values[key] = flat[0].item()
    return array, bool(array.any())


@functools.lru_cache(maxsize=16)
def _filled(layout: FrameLayout, value: Any) -> np.ndarray:
    """A read-only frame of ``value``, shared by the frames that hold only it."""
    array = np.full((layout.rows, layout.columns), value, dtype=layout.dtype)
    array.flags.writeable = False
    return array


class _DamagedFrame(Exception):
    """A frame's bytes are cut short or do not decode; read_chunk names the SEG and frame."""


def _frame(layout: FrameLayout, data: bytes, frame: FrameRef) -> tuple[np.ndarray, bool]:
    """A frame's stored values from its bytes, and whether any is non-zero."""
    index, ranges = frame
    expected = sum(length for _, length in ranges)  # 0 for a source that asks by frame number
    if len(data) < expected:
        raise _DamagedFrame(f"is cut short ({len(data)} of its {expected} bytes): the file is "
                            "truncated.")
    if layout.native and not ranges:
        # A frame asked for by number (DICOMweb) is the frame's bytes alone. A 1-bit frame of
        # other length would be cut to its first bits without this check (a server sending one
        # byte a pixel, say).
        size = -(-layout.rows * layout.columns * layout.bits_allocated // 8)
        if len(data) != size:
            raise _DamagedFrame(
                f"came as {len(data)} bytes, where a native frame of {layout.rows} x "
                f"{layout.columns} pixels of {layout.bits_allocated} bits takes {size}: the "
                "server sent something else."
            )
    try:
        if not layout.native and len(data) < _SMALL_CODESTREAM:
            return _decode_small(layout, data)
        array = decode_frame(layout, data, index)
    except _DamagedFrame:
        raise
    except Exception as error:  # each codec library raises its own types
        raise _DamagedFrame(
            f"cannot be decoded as {UID(layout.transfer_syntax_uid).name} "
            f"({type(error).__name__}: {error}): the file is damaged."
        ) from error
    return array, bool(array.any())


@dataclass(frozen=True)
class Output:
    """What highdicom's ``get_total_pixel_matrix`` makes of the stored values (small, picklable)."""

    segmentation_type: str
    combine_segments: bool
    numbers: tuple[int, ...]  # the requested segment numbers, in output order
    labels: tuple[int, ...]  # combined: the output value of each requested segment
    background: int  # LABELMAP combined: the value of stored labels that were not requested
    max_fractional: int | None  # FRACTIONAL: MaximumFractionalValue
    rescale: bool  # FRACTIONAL, not combined: divide by max_fractional
    dtype: str
    highest_stored: int | None = None  # LABELMAP: the highest label the SEG describes
    # LABELMAP whose segment numbers skip: every label a frame may hold (0, the padding value
    # and the described numbers); empty when they are all of 0..highest_stored.
    stored_labels: tuple[int, ...] = ()

    def lookup(self, bits_allocated: int) -> np.ndarray:
        """LABELMAP combined: output value of each stored label."""
        table = np.full(2**bits_allocated, self.background, dtype=self.dtype)
        table[list(self.numbers)] = self.labels
        return table


def read_chunk(
    source: FrameSource,
    layout: FrameLayout,
    frames: list[list[FrameRef | None]],
    tiles: tuple[int, int],
    shape: tuple[int, int],
    output: Output,
) -> np.ndarray:
    """Decode the frames of one chunk into highdicom's ``get_total_pixel_matrix`` values.

    ``frames[k][t]`` is ``(frame index, byte ranges)`` of channel ``k`` (a requested segment, or
    the label map) at the chunk's tile ``t`` in row-major order, or None for an omitted frame.
    """
    n_rows, n_columns = tiles
    th, tw = layout.rows, layout.columns
    labelmap = output.segmentation_type == "LABELMAP"
    combine = output.combine_segments
    shape_out = (n_rows * th, n_columns * tw) + (() if combine else (len(output.numbers),))
    out = np.zeros(shape_out, dtype=output.dtype)
    lookup = None
    if labelmap and combine:
        lookup = output.lookup(layout.bits_allocated)
        # Omitted and all-zero frames hold stored label 0 everywhere.
        out.fill(lookup[0])
    elif labelmap and 0 in output.numbers:
        # Segment 0 read as a segment (no PixelPaddingValue): its plane is 1 where those frames
        # are, as in highdicom; frames holding other labels overwrite it below.
        out[..., output.numbers.index(0)] = 1
    n_tiles = n_rows * n_columns
    # All of the chunk's frames are asked for at once, in the order used below, so that a
    # source that fetches over the network can ask for many in one request.
    refs = [f for t in range(n_tiles) for channel in frames if (f := channel[t]) is not None]
    name = str(getattr(source, "path", source))
    with source.open() as reader:
        data = reader.frames(layout, refs)
        for t in range(n_tiles):
            r, c = divmod(t, n_columns)
            tile = out[r * th : (r + 1) * th, c * tw : (c + 1) * tw]
            labelled = 0  # combined: pixels of the tile that earlier segments labelled
            for k, channel in enumerate(frames):
                frame = channel[t]
                if frame is None:
                    continue  # an omitted frame reads as zeros
                frame_layout, frame_bytes = next(data)
                try:
                    values, nonzero = _frame(frame_layout, frame_bytes, frame)
                except _DamagedFrame as error:
                    raise SegmentationFileError(f"{name}: frame {frame[0] + 1} {error}") from error
                if not nonzero:
                    continue  # the output holds what zeros become there already
                if labelmap:
                    highest = output.highest_stored
                    if highest is not None and (found := int(values.max())) > highest:
                        # highdicom returns such a label as it is; without a segment it means
                        # nothing, and a lookup would make it background silently.
                        raise SegmentationFileError(
                            f"{name}: frame {frame[0] + 1} holds label {found}, but the SEG "
                            f"describes segments up to {highest} only: the file is damaged."
                        )
                    if output.stored_labels:
                        described = allowed_labels(output.stored_labels)
                        if not described[values].all():
                            found = int(values[~described[values]][0])
                            raise SegmentationFileError(
                                f"{name}: frame {frame[0] + 1} holds label {found}, which no "
                                "segment of the SEG describes: the file is damaged."
                            )
                    if lookup is not None:
                        tile[...] = lookup[values]
                    else:
                        for j, number in enumerate(output.numbers):
                            tile[..., j] = values == number
                elif not combine:
                    if output.rescale:
                        if values.max() > output.max_fractional:
                            raise CombineError(  # a RuntimeError, as highdicom's
                                "Segmentation image contains values greater than the "
                                "MaximumFractionalValue recorded in the dataset."
                            )
                        # As highdicom: cast to the output type first, then divide.
                        tile[..., k] = values.astype(output.dtype) / output.max_fractional
                    else:
                        tile[..., k] = values
                else:
                    if output.max_fractional is not None and np.any(
                        (values != 0) & (values != output.max_fractional)
                    ):
                        raise SegmentationInputError(  # a ValueError, as highdicom's
                            "Cannot combine the segments of a FRACTIONAL SEG whose values are "
                            "not all 0 or MaximumFractionalValue; use combine_segments=False."
                        )
                    present = values != 0
                    # Overlap, counted: a pixel this segment shares with an earlier one does
                    # not add to the labelled pixels (count_nonzero is cheaper than an `and`).
                    expected = labelled + int(np.count_nonzero(present))
                    # The label as the output's type (a Python int does not cast to bool;
                    # read.py checked that the type holds it).
                    np.copyto(tile, tile.dtype.type(output.labels[k]), where=present)
                    labelled = int(np.count_nonzero(tile))
                    if labelled != expected:
                        raise CombineError(  # a RuntimeError, as highdicom's
                            "Segments overlap, so they cannot be combined into one label image; "
                            "read with combine_segments=False."
                        )
    return out[: shape[0], : shape[1]]


class CombineError(SegmentationInputError, RuntimeError):
    """Segments that cannot be read as asked (overlapping, or fractions, combined): a daskseg
    error, and a RuntimeError as highdicom raises in these cases."""


#: How :func:`read_chunk`'s refusals to combine segments end: their advice, which callers
#: without a ``combine_segments`` argument (OME-Zarr output, the CLI) replace with their own.
COMBINE_ADVICE = ("read with combine_segments=False.", "use combine_segments=False.")


def store_block(block: np.ndarray, target: Any, block_info: dict | None = None) -> np.ndarray:
    """Write one block into its region of the Zarr array; return a 1-element marker.

    Not into a local store whose folder is gone: the write was given up and its partial store
    removed, and a task that ran on (a cluster restarted under it: the scheduler forgot the
    task, its worker finished it) made the folder again with its chunk, 1-3 s after.
    """
    root = getattr(target.store, "root", None)  # a LocalStore's folder
    if root is not None and not os.path.isdir(root):
        raise FileNotFoundError(errno.ENOENT, "The Zarr store written was removed meanwhile",
                                str(root))
    target[tuple(slice(start, stop) for start, stop in block_location(block_info))] = block
    return np.ones((1,) * block.ndim, dtype=np.int64)


def read_planes(
    source: FrameSource,
    layout: FrameLayout,
    frames: list[list[FrameRef | None]],
    n_planes: int,
    output: Output,
) -> np.ndarray:
    """Decode ``n_planes`` planes of a SEG of a series: ``frames[k][p]`` is channel ``k``'s
    frame of plane ``p``."""
    # Here, not in the volume reader's module: a worker imports the module of each function it
    # runs, and that one brings highdicom and dask.array (38 MB more in every worker).
    rows, columns = layout.rows, layout.columns
    tall = read_chunk(source, layout, frames, (n_planes, 1), (n_planes * rows, columns), output)
    return tall.reshape((n_planes, rows, columns) + tall.shape[2:])
