"""Block of the mask -> encoded frames. Runs on the workers: numpy and codecs only.

A block covers whole tiles (the last block of a row or column may end in a partial tile, which
is padded with zeros to the full tile size, as highdicom pads edge tiles). Each block task checks
the values it sees, so checks that need the whole mask run in parallel and abort the write
cleanly, and returns the encoded frames with the few facts the header needs: which tiles hold any
non-zero pixel, and whether segments overlap anywhere in the block.
"""

from __future__ import annotations

import functools
import operator
import os
import re
import threading
from dataclasses import dataclass

import numpy as np

from daskseg._codecs import frame_dtype
from daskseg._pack import PackedBlock, pack_block, unpacked
from daskseg.errors import SegmentationInputError
from daskseg.plan import FrameSpec, allowed_labels, block_location

__all__ = [
    "BlockResult", "MaskValueError", "Where", "encode_block", "encode_chunk", "encode_frame",
    "encode_numpy_block", "segment_frame", "spool_block", "worker_spool_name", "write_all",
]


@dataclass
class BlockResult:
    """What one block task sends back to the client.

    The frames travel as one buffer with an index, not as a list of ``bytes``: distributed
    sends numpy arrays without pickling their contents, and the client spools a block with one
    write instead of one per frame.
    """

    tile_row: int  # first tile row of the block
    tile_column: int  # first tile column of the block
    tile_nonempty: np.ndarray  # bool (block tile rows, block tile columns)
    positions: np.ndarray  # int64 (frames, 3): channel, tile row, tile column, in file order
    lengths: np.ndarray  # int64 (frames,): bytes of each encoded frame
    # uint8: the encoded frames one after another (empty when spooled, maybe packed when sent)
    data: np.ndarray | PackedBlock
    overlap: bool  # some pixel belongs to more than one segment
    # Where the worker appended ``data`` itself (file name, offset), when it could.
    spooled: tuple[str, int] | None = None

    @classmethod
    def of(
        cls,
        tile_row: int,
        tile_column: int,
        tile_nonempty: np.ndarray,
        frames: list[tuple[int, int, int, bytes]],
        overlap: bool,
    ) -> BlockResult:
        """The result of ``(channel, tile row, tile column, encoded)`` frames."""
        positions = np.array([frame[:3] for frame in frames], dtype=np.int64).reshape(-1, 3)
        lengths = np.array([len(frame[3]) for frame in frames], dtype=np.int64)
        data = np.frombuffer(b"".join(frame[3] for frame in frames), dtype=np.uint8)
        return cls(tile_row, tile_column, tile_nonempty, positions, lengths, data, overlap)


@dataclass(frozen=True)
class Where:
    """Pixels of the mask a check covers: first and last row and column of its pixel matrix
    (for a series, the planes in slice order one below the other)."""

    rows: tuple[int, int]
    columns: tuple[int, int]

    def __str__(self) -> str:
        if self.rows[0] == self.rows[1] and self.columns[0] == self.columns[1]:
            return f"at row {self.rows[0]}, column {self.columns[0]}"
        return (f"in rows {self.rows[0]}..{self.rows[1]}, "
                f"columns {self.columns[0]}..{self.columns[1]}")


class MaskValueError(SegmentationInputError):
    """A value of the mask that the SEG cannot store, found by a block task; ``where`` it is,
    for the client to say in the terms of the mask given (a series' mask frame, say)."""

    def __init__(self, message: str, where: Where | None = None) -> None:
        super().__init__(message)
        self.where = where

    def __reduce__(self) -> tuple:  # the location survives the way back from the worker
        return type(self), (self.args[0], self.where)


def check_block_values(block: np.ndarray, spec: FrameSpec, where: Where) -> None:
    """Raise SegmentationInputError if the block holds values the SEG cannot store."""
    if block.size == 0 or block.dtype == bool:
        return
    kind = block.dtype.kind
    if kind == "f":
        if not np.isfinite(block).all():
            raise MaskValueError(
                f"The mask holds NaN or infinite values {where}; a mask must be finite.",
                where,
            )
        low, high = float(block.min()), float(block.max())
        if low < 0.0 or high > 1.0:
            raise MaskValueError(
                f"A floating-point mask must lie in [0, 1], but {where} it spans "
                f"[{low}, {high}].",
                where,
            )
        if spec.segmentation_type != "FRACTIONAL" and not np.isin(block, (0.0, 1.0)).all():
            raise MaskValueError(
                f"A floating-point mask for a {spec.segmentation_type} SEG must hold only 0.0 "
                f"and 1.0, but {where} it holds fractions; use segmentation_type='FRACTIONAL'.",
                where,
            )
        return
    check_value_range(int(block.min()), int(block.max()), spec, where)


def check_value_range(low: int, high: int, spec: FrameSpec, where: Where) -> None:
    """Raise SegmentationInputError if integers in ``low..high`` cannot be stored."""
    if low < 0:
        raise MaskValueError(
            f"The mask holds negative values (as low as {low}) {where}; labels and "
            "segment planes must be non-negative.",
            where,
        )
    if not spec.stacked:
        if high > spec.highest_label:
            raise MaskValueError(
                f"The label image holds the label {high} {where}, but {_described(spec)}; "
                "describe every label or remove it.",
                where,
            )
    elif spec.segmentation_type == "FRACTIONAL":
        if high > spec.max_fractional_value:
            raise MaskValueError(
                f"An integer FRACTIONAL mask holds stored values 0..max_fractional_value "
                f"({spec.max_fractional_value}), but {where} it holds {high}.",
                where,
            )
    elif high > 1:
        raise MaskValueError(
            f"A stack of segment planes for a {spec.segmentation_type} SEG must hold only 0 "
            f"and 1, but {where} it holds {high}; pass a label image instead, or binarize.",
            where,
        )


def _described(spec: FrameSpec) -> str:
    if spec.label_numbers and spec.segmentation_type != "LABELMAP":
        return (f"the segments' label values (label_values; dcmqi's labelIDs) are "
                f"{list(spec.label_numbers)}")
    if spec.label_numbers:
        return f"the segments described are numbered {list(spec.label_numbers)}"
    if spec.n_segments == 1:
        return "only 1 segment is described"
    return f"only {spec.n_segments} segments are described"


def _first_pixel(block: np.ndarray, bad: np.ndarray, first_row: int,
                 first_column: int) -> tuple[int, Where]:
    """The value of the block's first pixel where ``bad`` holds, and where it is (a message's
    words; on the error path only)."""
    r, c = (int(v) for v in np.argwhere(bad)[0])
    return int(block[r, c]), Where((first_row + r,) * 2, (first_column + c,) * 2)


# Label values below this are checked with a table of every value up to the highest; higher
# ones (label_values as large as cell IDs) one by one.
_LOOKUP_LIMIT = 1 << 20


def check_labels_described(block: np.ndarray, spec: FrameSpec, first_row: int,
                           first_column: int) -> None:
    """Raise unless every value of a label block in 0..highest_label is 0 or a described
    segment number (a LABELMAP whose numbers skip some; PS3.3 C.8.20.2.3)."""
    if spec.highest_label < _LOOKUP_LIMIT:
        undescribed = ~allowed_labels((0, *spec.label_numbers))[block]
    else:  # label_values as large as cell IDs: no table of every value up to the highest
        undescribed = ~np.isin(block, [0, *spec.label_numbers])
    if undescribed.any():
        label, where = _first_pixel(block, undescribed, first_row, first_column)
        raise MaskValueError(
            f"The label image holds the label {label} {where}, but "
            f"{_described(spec)}; describe every label or remove it.",
            where,
        )


def segment_frame(tile: np.ndarray, spec: FrameSpec, channel: int) -> np.ndarray:
    """The stored values of one frame: segment ``channel + 1`` of a tile, or the label map.

    Follows highdicom's ``Segmentation._get_segment_pixel_array``: FRACTIONAL floats are scaled
    by ``max_fractional_value`` and rounded, booleans and 0/1 label planes become 0 or the
    maximum, LABELMAP stacks are combined into labels.
    """
    if spec.segmentation_type == "LABELMAP":
        dtype = np.uint8 if spec.bits_allocated == 8 else np.uint16
        if not spec.stacked:
            return tile.astype(dtype, copy=False)
        planes = tile.astype(bool, copy=False)
        if spec.label_numbers:  # plane k is segment label_numbers[k]
            labels = np.asarray(spec.label_numbers, dtype=dtype)[planes.argmax(axis=-1)]
        else:
            labels = planes.argmax(axis=-1).astype(dtype) + 1
        return np.where(planes.any(axis=-1), labels, 0).astype(dtype, copy=False)

    return _plane_values(tile[..., channel] if spec.stacked else tile, spec, channel)


def _plane_values(plane: np.ndarray, spec: FrameSpec, channel: int) -> np.ndarray:
    """:func:`segment_frame` of a BINARY or FRACTIONAL SEG, given the tile's plane ``channel``
    of a stack, or the tile of a label image."""
    if spec.segmentation_type == "BINARY":
        if spec.stacked:
            return plane.astype(np.uint8, copy=False)
        # bools are bytes of 0 and 1: no copy
        return (plane == spec.label_of(channel)).view(np.uint8)

    # FRACTIONAL
    scale = spec.max_fractional_value
    if plane.dtype.kind == "f":
        if plane.dtype.itemsize < 4:
            # Scaled in float16, 0.0686 x 255 (17.49) rounds to 18: in float32, as highdicom
            # scales a float32 mask (it refuses float16).
            plane = plane.astype(np.float32)
        return np.around(plane * float(scale)).astype(np.uint8)
    if not spec.stacked:
        return ((plane == spec.label_of(channel)) * scale).astype(np.uint8)
    if plane.dtype == bool:
        return (plane * scale).astype(np.uint8)
    # Integer planes are already stored values in 0..max_fractional_value.
    return plane.astype(np.uint8, copy=False)


def encode_frame(frame: np.ndarray, spec: FrameSpec) -> bytes:
    """Encode one frame's stored values with the SEG's transfer syntax (see ``_codecs``)."""
    return spec.codec.encode(frame, spec.bits_allocated)


def encode_block(
    block: np.ndarray, spec: FrameSpec, tile_row: int, tile_column: int
) -> BlockResult:
    """Check a block of the mask and encode every frame of every tile it covers.

    Parameters
    ----------
    block : numpy.ndarray
        Rows x columns (x segments) of the mask, starting at tile ``(tile_row, tile_column)``.
    spec : FrameSpec
        The SEG's frame parameters.
    tile_row, tile_column : int
        Grid position of the block's first tile.

    Returns
    -------
    BlockResult
        Encoded frames in file order within the block, and the block's non-empty tiles.
    """
    block = np.asarray(block)
    rows, columns = block.shape[:2]
    th, tw = spec.tile_rows, spec.tile_columns
    where = Where((tile_row * th, tile_row * th + rows - 1),
                  (tile_column * tw, tile_column * tw + columns - 1))
    # A label image of integers (or one segment's booleans): each tile's lowest and highest
    # value tell whether the block may be stored, which tiles are empty and, mostly, which
    # frames are uniform, without a pass over the pixels for each.
    labels = (not spec.stacked and block.ndim == 2 and block.dtype.kind in "biu"
              and block.size > 0)
    if not labels:
        check_block_values(block, spec, where)
    n_rows, n_columns = -(-rows // th), -(-columns // tw)
    if block.shape[0] != n_rows * th or block.shape[1] != n_columns * tw:
        # Edge block: pad with zeros to whole tiles, as highdicom pads edge tiles.
        padding = [(0, n_rows * th - rows), (0, n_columns * tw - columns)]
        padding += [(0, 0)] * (block.ndim - 2)
        block = np.pad(block, padding)

    # (tile rows, tile columns, th, tw[, segments]) views without copying.
    tiles = block.reshape(n_rows, th, n_columns, tw, *block.shape[2:]).swapaxes(1, 2)
    tile_low = tile_high = None
    if labels:
        # The zeros of an edge block's padding cannot hide a negative or a too high label.
        tile_low, tile_high = tile_ranges(block, n_rows, n_columns)
        highest = spec.highest_label
        if block.dtype != bool and (tile_low.min() < 0 or tile_high.max() > highest):
            # Said of the first pixel that holds such a value, with that pixel's value.
            value, at = _first_pixel(block, (block < 0) | (block > highest), tile_row * th,
                                     tile_column * tw)
            check_value_range(value, value, spec, at)
        if spec.label_numbers:  # in range, but described?
            # True is label 1, as highdicom reads a boolean label image: refused unless
            # segment 1 is described (a LABELMAP of one segment numbered 5 stored 1).
            check_labels_described(block.view(np.uint8) if block.dtype == bool else block,
                                   spec, tile_row * th, tile_column * tw)
        tile_nonempty = tile_high > 0  # no value is negative now
    else:
        nonzero_axes = tuple(range(2, tiles.ndim))
        tile_nonempty = np.asarray(tiles.any(axis=nonzero_axes))

    overlap = False
    if spec.stacked and spec.n_segments > 1 and block.dtype.kind != "f":
        overlap = bool((block.astype(bool).sum(axis=-1, dtype=np.uint16) > 1).any())
    elif spec.stacked and spec.n_segments > 1 and spec.segmentation_type != "FRACTIONAL":
        overlap = bool((block.sum(axis=-1) > 1).any())
    if overlap and spec.segmentation_type == "LABELMAP":
        raise SegmentationInputError(
            "Segments overlap (a pixel belongs to more than one segment plane), which a "
            "LABELMAP SEG cannot store; use segmentation_type='BINARY'."
        )

    present = _segments_present(tiles, spec)
    stored = frame_dtype(spec.bits_allocated).str
    # A stack's planes are interleaved (segments last): one plane cut from a tile reads every
    # cache line of the tile's planes, so cutting 128 segments read each tile 128 times (three
    # times the codec's time for native BINARY). The planes of a group (at most
    # _CUT_GROUP_BYTES of them) present in a tile are copied planes-first once (none when one
    # is: see _planes_first), and the frames are put back in file order.
    planes_of_tiles = spec.stacked and spec.n_channels > 1
    group = (max(1, _CUT_GROUP_BYTES // (th * tw * block.dtype.itemsize)) if planes_of_tiles
             else spec.n_channels)
    frames: list[tuple[int, int, int, bytes]] = []
    for first in range(0, spec.n_channels, group):
        channels = range(first, min(first + group, spec.n_channels))
        for r in range(n_rows):
            for c in range(n_columns):
                planes: dict[int, np.ndarray] | None = None  # the group's planes, when cut
                for channel in channels:
                    if spec.omit_empty_frames and not tile_nonempty[r, c]:
                        continue
                    if present is not None and not present[r, c, channel]:
                        # The segment is absent from the tile: its frame is all zeros.
                        if not spec.omit_empty_frames:
                            frames.append((channel, tile_row + r, tile_column + c,
                                           _encode_uniform(0, "|u1", spec)))
                        continue
                    known = None
                    if tile_low is not None and tile_high is not None:
                        known = label_frame_range(int(tile_low[r, c]), int(tile_high[r, c]), spec,
                                                  channel)
                    if known is not None and known[0] == known[1]:
                        if not (spec.omit_empty_frames and known[1] == 0):
                            frames.append((channel, tile_row + r, tile_column + c,
                                           _encode_uniform(known[0], stored, spec)))
                        continue
                    if planes_of_tiles:
                        if planes is None:
                            planes = _planes_first(tiles[r, c], [
                                k for k in channels if present is None or present[r, c, k]])
                        frame = _plane_values(planes[channel], spec, channel)
                    else:
                        frame = segment_frame(tiles[r, c], spec, channel)
                    if known is not None:
                        low, high = known
                    elif tile_low is not None:
                        # A label tile of several values: this segment's frame holds zeros.
                        low, high = 0, frame.max()
                    else:
                        low, high = frame.min(), frame.max()
                    if spec.omit_empty_frames and high == 0:
                        continue
                    if low == high:
                        encoded = _encode_uniform(int(low), frame.dtype.str, spec)
                    else:
                        encoded = encode_frame(frame, spec)
                    frames.append((channel, tile_row + r, tile_column + c, encoded))
    if spec.n_channels > 1:
        frames.sort(key=operator.itemgetter(0, 1, 2))  # file order: channel, tile row, column
    return BlockResult.of(tile_row, tile_column, tile_nonempty, frames, overlap)


def tile_ranges(block: np.ndarray, n_rows: int, n_columns: int) -> tuple[np.ndarray, np.ndarray]:
    """Each tile's lowest and highest value, ``(n_rows, n_columns)`` each, of a 2-D block.

    Reduces each band of tile rows along its rows first, where the pixels of a row are
    contiguous: about five times faster than reducing each tile's strided view.
    """
    bands = block.reshape(n_rows, block.shape[0] // n_rows, block.shape[1])
    tile_width = block.shape[1] // n_columns
    low = bands.min(axis=1).reshape(n_rows, n_columns, tile_width).min(axis=2)
    high = bands.max(axis=1).reshape(n_rows, n_columns, tile_width).max(axis=2)
    return low, high


def label_frame_range(
    low: int, high: int, spec: FrameSpec, channel: int
) -> tuple[int, int] | None:
    """The lowest and highest stored value of the frame of a label tile holding ``low..high``.

    None when the tile's range does not tell (a segment between its lowest and highest label
    may or may not be in it). A LABELMAP frame holds the labels; a BINARY or FRACTIONAL frame
    of segment ``channel + 1`` holds 0 where the label differs and 1 (or the maximum
    fractional value) where it equals (see :func:`segment_frame`).
    """
    if spec.segmentation_type == "LABELMAP":
        return low, high
    segment = spec.label_of(channel)
    inside = 1 if spec.segmentation_type == "BINARY" else spec.max_fractional_value
    if low == high:
        value = inside if low == segment else 0
        return value, value
    if segment < low or segment > high:
        return 0, 0
    if segment in (low, high):
        return 0, inside
    return None


_FEW_SEGMENTS = 8
# Bytes of a tile's planes copied planes-first at a time by encode_block (a few frames' worth),
# a few rows at a time, each few within a core's L2 cache: a transposing copy of a whole tile
# reads a cache line per pixel of each plane (8 MiB of 32 bool planes: 36 ms, in rows 7 ms).
_CUT_GROUP_BYTES = 8 * 2**20
_TRANSPOSE_BYTES = 2**18


def _planes_first(tile: np.ndarray, channels: list[int]) -> dict[int, np.ndarray]:
    """A stack's tile ``(rows, columns, segments)``: its planes ``channels`` by channel.

    Several are copied planes-first, a few rows at a time; a single one is left a view of the
    tile (its cut reads the tile once either way, and most tiles of a sparse stack hold one).
    """
    if len(channels) < 2:
        return {k: tile[..., k] for k in channels}
    rows, columns = tile.shape[:2]
    planes = np.empty((len(channels), rows, columns), dtype=tile.dtype)
    index: slice | list[int] = channels
    if channels[-1] - channels[0] == len(channels) - 1:  # a run: sliced, not gathered
        index = slice(channels[0], channels[-1] + 1)
    step = max(1, _TRANSPOSE_BYTES // (columns * tile.shape[2] * tile.dtype.itemsize))
    for start in range(0, rows, step):
        planes[:, start:start + step] = np.moveaxis(tile[start:start + step, :, index], -1, 0)
    return dict(zip(channels, planes))


def _segments_present(tiles: np.ndarray, spec: FrameSpec) -> np.ndarray | None:
    """``(tile rows, tile columns, segments)``: whether each segment has a pixel in each tile.

    One pass over a tile instead of one per segment: a volume's slice holds a few of its 100
    segments, and comparing each slice with every segment number would cost most of the time.
    None for a single channel (LABELMAP, or one segment), and for a label image of a few
    segments, where the comparisons that make the frames cost less than this pass (a bincount
    costs about eight comparisons).
    """
    if spec.n_channels == 1 or (not spec.stacked and spec.n_segments <= _FEW_SEGMENTS):
        return None
    n_rows, n_columns = tiles.shape[:2]
    present = np.zeros((n_rows, n_columns, spec.n_channels), dtype=bool)
    for r in range(n_rows):
        for c in range(n_columns):
            tile = tiles[r, c]
            if spec.stacked:
                present[r, c] = tile.any(axis=(0, 1))
            else:
                # check_block_values has checked the labels are in 0..highest_label.
                if spec.highest_label > 65535:  # a count of every value would be large
                    present[r, c] = np.isin(spec.label_numbers, tile)
                    continue
                counts = np.bincount(tile.ravel().astype(np.intp, copy=False),
                                     minlength=spec.highest_label + 1)
                present[r, c] = (counts[list(spec.label_numbers)] if spec.label_numbers
                                 else counts[1 : spec.n_segments + 1]) > 0
    return present


@functools.lru_cache(maxsize=64)
def _encode_uniform(value: int, dtype: str, spec: FrameSpec) -> bytes:
    """The encoding of a frame whose pixels all hold ``value``, made once per process.

    Most frames of a slide's mask are empty or wholly inside one segment; encoding each of them
    again would spend most of the codec's time on frames that are all the same.
    """
    frame = np.full((spec.tile_rows, spec.tile_columns), value, dtype=np.dtype(dtype))
    return encode_frame(frame, spec)


def encode_chunk(
    block: np.ndarray, spec: FrameSpec, spool_prefix: str | None = None,
    block_info: dict | None = None,
) -> np.ndarray:
    """``map_blocks`` form of :func:`encode_block`: a 1 x 1 object array holding its result.

    As a blockwise task it fuses with the task that reads the block (from Zarr, say), so a
    block is read and encoded in one task on one worker, never shipped between workers. With
    ``spool_prefix``, the frames go to this worker's spool file, when it has one (see
    :func:`spool_block`).
    """
    location = block_location(block_info)
    (row_start, row_stop), (column_start, column_stop) = location[:2]
    expected = tuple(stop - start for start, stop in location)
    if np.shape(block) != expected:
        # Blocks of the user's Dask mask of another shape than its chunks declare (a
        # map_blocks that crops, its chunks= not saying so), joined into this one: its edge
        # would be padded with empty rows. (Longer ones mostly fail in numpy first.)
        where = Where((row_start, row_stop - 1), (column_start, column_stop - 1))
        raise MaskValueError(
            f"The mask's pixels {where} came as an array of shape {np.shape(block)}, not "
            f"{expected}: the Dask array's blocks are not the shape its chunks declare (a "
            "map_blocks whose function changes a block's shape needs chunks= that say so).",
            where,
        )
    result = np.empty((1, 1), dtype=object)
    result[0, 0] = spool_block(encode_block(
        block, spec, row_start // spec.tile_rows, column_start // spec.tile_columns
    ), spool_prefix)
    return result


def encode_numpy_block(
    spec: FrameSpec, shape: tuple[int, ...] | None, spool_prefix: str | None,
    block: np.ndarray | PackedBlock, tile_row: int, tile_column: int,
) -> np.ndarray:
    """:func:`encode_chunk`'s result for a block sent on its own (a mask in memory).

    The block is unpacked when it came packed (:func:`pack_block`), then reshaped to ``shape``
    when given (the slices of a volume as one tall image), here on the worker: on the client,
    reshaping a view of the mask would copy it.
    """
    array: np.ndarray = unpacked(block)
    if shape is not None:
        array = array.reshape(shape)
    result = np.empty((1, 1), dtype=object)
    result[0, 0] = spool_block(encode_block(array, spec, tile_row, tile_column), spool_prefix)
    return result


_spool_lock = threading.Lock()  # a worker's threads append to one file


def write_all(fd: int, data: bytes | memoryview) -> None:
    """Write all of ``data`` to a file descriptor: one write may take only part of it."""
    view = memoryview(data).cast("B")
    while view:
        view = view[os.write(fd, view):]


def worker_spool_name(prefix: str, worker_address: str) -> str:
    """The spool file of the worker at ``worker_address``: the writer creates it beforehand."""
    return prefix + re.sub(r"[^0-9A-Za-z.]+", "_", worker_address) + ".spool"


def spool_block(result: BlockResult, spool_prefix: str | None) -> BlockResult:
    """Append the block's frames to this worker's spool file, if the writer made one for it.

    A worker on the writer's machine writes its frames beside the destination itself, and
    sends back only where they are: frames then never pass through the client (hundreds of MB
    for a native SEG of a CT series). The file is only opened, never created here: a worker
    the writer did not prepare a file for (one that joined later, or a task still running
    after the writer gave up and removed its files) sends its frames back instead, packed
    when that halves them (:func:`~daskseg._pack.pack_block`; native frames mostly).
    """
    frames = result.data
    if spool_prefix is None or not isinstance(frames, np.ndarray) or not frames.size:
        return result
    try:
        from distributed import get_worker

        path = worker_spool_name(spool_prefix, get_worker().address)
        with _spool_lock:
            fd = os.open(path, os.O_WRONLY | os.O_APPEND)
            try:
                offset = os.fstat(fd).st_size
                write_all(fd, frames.data)
            finally:
                os.close(fd)
    except ValueError:  # not on a worker: Dask's local scheduler, whose results stay here
        return result
    except OSError:  # no file for this worker (on another machine, say), or a full disk
        # The frames go back through the network: native ones compress well.
        result.data = pack_block(frames)
        return result
    result.spooled = (os.path.basename(path), offset)
    result.data = np.empty(0, dtype=np.uint8)  # not a view: that would keep the frames
    return result
