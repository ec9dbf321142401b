"""The tile grid, segments and frame order of one SEG: pure functions, no I/O, no cluster.

Frame order follows highdicom (and, for TILED_FULL, PS3.3 C.7.6.17.3): segment slowest, then
tile row, then tile column. A LABELMAP SEG has one "segment" axis entry: all labels in one frame.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from daskseg._codecs import CODECS, Codec

__all__ = [
    "FrameSpec", "TileGrid", "aligned_chunks", "allowed_labels", "block_location", "chunks_of",
    "included_frames", "label_numbers", "spatial_index_values", "writer_block_chunks",
]


@dataclass(frozen=True)
class TileGrid:
    """A total pixel matrix of ``rows`` x ``columns`` cut into tiles of ``tile_rows`` x ``tile_columns``."""

    rows: int
    columns: int
    tile_rows: int
    tile_columns: int

    @property
    def n_tile_rows(self) -> int:
        return math.ceil(self.rows / self.tile_rows)

    @property
    def n_tile_columns(self) -> int:
        return math.ceil(self.columns / self.tile_columns)

    @property
    def n_tiles(self) -> int:
        return self.n_tile_rows * self.n_tile_columns

    @property
    def pixels_per_frame(self) -> int:
        return self.tile_rows * self.tile_columns


@dataclass(frozen=True)
class FrameSpec:
    """Everything a worker needs to turn a block of the mask into encoded frames.

    Sent to the workers with every block task, so it holds only small, plain values.
    """

    segmentation_type: str  # "BINARY", "FRACTIONAL" or "LABELMAP"
    n_segments: int
    stacked: bool  # True: (rows, cols, segments) planes; False: a label image
    tile_rows: int
    tile_columns: int
    transfer_syntax_uid: str
    bits_allocated: int
    max_fractional_value: int
    omit_empty_frames: bool
    # The value of each segment in a label image when it is not 1..n_segments: a LABELMAP's
    # segment numbers (its pixels hold them), or the ``label_values`` of BINARY and
    # FRACTIONAL segments (numbered 1..n); empty otherwise.
    label_numbers: tuple[int, ...] = ()

    @property
    def highest_label(self) -> int:
        """The highest value a label image (or a LABELMAP frame) may hold."""
        return max(self.label_numbers) if self.label_numbers else self.n_segments

    def label_of(self, channel: int) -> int:
        """The value of segment ``channel + 1`` in a label image."""
        return self.label_numbers[channel] if self.label_numbers else channel + 1

    @property
    def n_channels(self) -> int:
        """Frames per tile: one per segment, or one for a label map."""
        return 1 if self.segmentation_type == "LABELMAP" else self.n_segments

    @property
    def is_native(self) -> bool:
        return not self.codec.encapsulated

    @property
    def codec(self) -> Codec:
        return CODECS[str(self.transfer_syntax_uid)]


@functools.lru_cache(maxsize=16)
def allowed_labels(values: tuple[int, ...]) -> np.ndarray:
    """A table, by value up to the highest of ``values``, of whether a label is one of them:
    the labels a label image (writing) or a LABELMAP frame (reading) may hold. Made once per
    process for each set of values."""
    table = np.zeros(max(values) + 1, dtype=bool)
    table[list(values)] = True
    table.flags.writeable = False  # shared by every caller in the process
    return table


def label_numbers(numbers: Sequence[int]) -> tuple[int, ...]:
    """:attr:`FrameSpec.label_numbers` of segment numbers: empty when they are 1..n."""
    return () if list(numbers) == list(range(1, len(numbers) + 1)) else tuple(numbers)


_MAX_TILES = 8  # tiles per chunk along an axis, by default


def _tiles_near(hint: int, tile: int, min_tiles: int = 1, max_tiles: int = _MAX_TILES) -> int:
    """Whole tiles per chunk nearest ``hint`` pixels, within the bounds."""
    return max(min_tiles, min(max_tiles, round(hint / tile) or 1))


def chunks_of(size: int, step: int) -> tuple[int, ...]:
    """Chunks of ``step`` along an axis of ``size``, the last one shorter if need be."""
    full, rest = divmod(size, step)
    return (step,) * full + ((rest,) if rest else ())


def aligned_chunks(
    size: int, tile: int, hint: int, *, min_tiles: int = 1, max_tiles: int = _MAX_TILES
) -> tuple[int, ...]:
    """Chunk sizes along one axis: whole tiles per chunk, close to ``hint`` pixels.

    Parameters
    ----------
    size : int
        Length of the axis.
    tile : int
        Tile length along the axis.
    hint : int
        The chunk length the user's array has (aligned chunks near it keep rechunking cheap).
    min_tiles, max_tiles : int
        Bounds on tiles per chunk: few enough to keep a task's memory small, many enough to
        amortize the scheduler's cost per task.

    Returns
    -------
    tuple of int
        Chunk lengths summing to ``size``; all but the last are multiples of ``tile``.

    Examples
    --------
    >>> aligned_chunks(1000, 64, 300)
    (320, 320, 320, 40)
    """
    return chunks_of(size, _tiles_near(hint, tile, min_tiles, max_tiles) * tile)


def included_frames(frame_lengths: np.ndarray) -> np.ndarray:
    """Indices ``(channel, tile_row, tile_column)`` of the frames present, in file order.

    ``frame_lengths`` has shape ``(channels, n_tile_rows, n_tile_columns)`` with -1 for an
    omitted frame; C order of that array is the file order.
    """
    return np.argwhere(frame_lengths >= 0)


def spatial_index_values(tile_nonempty: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """1-based dimension index values of each tile row and column, as highdicom assigns them.

    highdicom indexes a TILED_SPARSE frame's position among the distinct positions of the
    *included* tiles (those with any non-zero pixel in any segment), so a tile row that is empty
    everywhere takes no index. Returns arrays mapping tile row -> index and tile column -> index
    (0 for a row or column without included tiles).
    """
    row_used = tile_nonempty.any(axis=1)
    col_used = tile_nonempty.any(axis=0)
    return (
        np.where(row_used, np.cumsum(row_used), 0),
        np.where(col_used, np.cumsum(col_used), 0),
    )


# A writer's block should hold enough frames that the codec's work outweighs what a task costs
# the scheduler, the client and the worker's event loop (a few ms each, measured: 64 blocks of
# 16 HTJ2K frames spent 0.25 s of the client's CPU in a 1.1 s write, 16 blocks of 64 about
# half), and there should be blocks enough that both workers stay busy to the end. Blocks are
# grown only while they stay under MAX_GROWN_BLOCK_BYTES of the mask (a worker holds a few).
FRAMES_PER_BLOCK = 64
MIN_BLOCKS = 16
MAX_GROWN_BLOCK_BYTES = 32 * 2**20
# A block holds every plane of a stack: one near the mask's chunks is halved, whole tiles at a
# time, until the mask's part of it fits, so that a few blocks a worker bound its memory
# whatever the chunks (117 planes of 4096 x 4096 chunks made 1.83 GiB blocks).
MAX_BLOCK_BYTES = 128 * 2**20


def writer_block_chunks(
    grid: TileGrid, n_channels: int, hint: tuple[int, int], bytes_per_pixel: int = 1
) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """Row and column chunks of the writer's blocks: whole tiles, near ``hint``, not too few frames.

    Starts from the whole tiles nearest the mask's own chunks (``hint``, see
    :func:`aligned_chunks`) and doubles a block's tiles along one axis at a time while a block
    holds fewer than ``FRAMES_PER_BLOCK`` frames (tiles x ``n_channels``), no axis exceeds 8
    tiles, at least ``MIN_BLOCKS`` blocks remain, and a block of the mask (``bytes_per_pixel``
    each) stays within ``MAX_GROWN_BLOCK_BYTES``. A uint8 label map (one frame per tile) of
    2048-pixel chunks and 512-pixel tiles thus gets 4096-pixel blocks; an int64 one keeps its
    2048-pixel blocks. A block near the chunks that holds more than ``MAX_BLOCK_BYTES`` of the
    mask (a stack of many planes) is first halved along its longer side until it fits, or is
    one tile.

    Examples
    --------
    >>> rows, columns = writer_block_chunks(TileGrid(16384, 16384, 512, 512), 1, (2048, 2048))
    >>> rows[0], columns[0], len(rows) * len(columns)
    (4096, 4096, 16)
    >>> writer_block_chunks(TileGrid(16384, 16384, 512, 512), 5, (2048, 2048))[0][0]
    2048
    >>> writer_block_chunks(TileGrid(16384, 16384, 512, 512), 1, (2048, 2048), 8)[0][0]
    2048
    >>> rows, columns = writer_block_chunks(TileGrid(8192, 8192, 512, 512), 117, (4096, 4096), 117)
    >>> rows[0], columns[0]
    (1024, 1024)
    """
    tiles = [_tiles_near(hint[0], grid.tile_rows), _tiles_near(hint[1], grid.tile_columns)]
    n_tiles = (grid.n_tile_rows, grid.n_tile_columns)

    def mask_bytes(counts: list[int]) -> int:
        return counts[0] * grid.tile_rows * counts[1] * grid.tile_columns * bytes_per_pixel

    while mask_bytes(tiles) > MAX_BLOCK_BYTES and max(tiles) > 1:
        longer = 0 if tiles[0] * grid.tile_rows >= tiles[1] * grid.tile_columns else 1
        if tiles[longer] == 1:
            longer = 1 - longer
        tiles[longer] = max(1, tiles[longer] // 2)

    def n_blocks(counts: list[int]) -> int:
        return math.ceil(n_tiles[0] / counts[0]) * math.ceil(n_tiles[1] / counts[1])

    while tiles[0] * tiles[1] * n_channels < FRAMES_PER_BLOCK:
        grown = False
        for axis in sorted((1, 0), key=lambda a: tiles[a]):  # the shorter side first
            wider = list(tiles)
            wider[axis] = min(_MAX_TILES, 2 * tiles[axis], n_tiles[axis])
            if (wider[axis] > tiles[axis] and n_blocks(wider) >= MIN_BLOCKS
                    and mask_bytes(wider) <= MAX_GROWN_BLOCK_BYTES):
                tiles, grown = wider, True
                break
        if not grown:
            break
    return (chunks_of(grid.rows, tiles[0] * grid.tile_rows),
            chunks_of(grid.columns, tiles[1] * grid.tile_columns))


def block_location(block_info: dict[Any, Any] | None, key: Any = 0) -> list[tuple[int, int]]:
    """``(start, stop)`` along each axis of a ``map_blocks`` block, from dask's ``block_info``.

    ``key`` is the input's position (0 for the first), or None for the output block.
    """
    if block_info is None:
        raise TypeError("block_info is missing: the function is called by dask's map_blocks.")
    return block_info[key]["array-location"]
