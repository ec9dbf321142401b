"""The tile grid, chunk alignment and frame order: pure functions, no cluster."""

from __future__ import annotations

import numpy as np
import pytest
from pydicom.uid import JPEG2000Lossless

from daskseg._codecs import CODECS
from daskseg.plan import (
    FrameSpec,
    TileGrid,
    aligned_chunks,
    block_location,
    writer_block_chunks,
    included_frames,
    spatial_index_values,
)


def test_tile_grid_counts_partial_tiles():
    grid = TileGrid(rows=230, columns=170, tile_rows=64, tile_columns=48)
    assert (grid.n_tile_rows, grid.n_tile_columns, grid.n_tiles) == (4, 4, 16)
    assert grid.pixels_per_frame == 64 * 48


@pytest.mark.parametrize("size, tile, hint", [(1000, 64, 300), (64, 64, 2048), (7, 3, 1),
                                              (20000, 256, 2048)])
def test_aligned_chunks_are_whole_tiles_summing_to_the_axis(size, tile, hint):
    chunks = aligned_chunks(size, tile, hint)
    assert sum(chunks) == size
    assert all(c % tile == 0 for c in chunks[:-1])
    assert all(c <= 8 * tile for c in chunks)


def test_included_frames_are_in_file_order():
    lengths = np.full((2, 2, 3), -1)
    lengths[1, 0, 2] = lengths[0, 1, 0] = lengths[1, 1, 1] = 5
    assert included_frames(lengths).tolist() == [[0, 1, 0], [1, 0, 2], [1, 1, 1]]


def test_spatial_index_values_skip_empty_rows_and_columns():
    nonempty = np.array([[False, False, False], [True, False, True], [False, False, True]])
    rows, columns = spatial_index_values(nonempty)
    assert rows.tolist() == [0, 1, 2] and columns.tolist() == [1, 0, 2]


def test_frame_spec_takes_its_codec_from_the_table():
    spec = FrameSpec("LABELMAP", 3, False, 64, 64, str(JPEG2000Lossless), 8, 255, True)
    assert spec.codec is CODECS[JPEG2000Lossless] and not spec.is_native
    assert spec.n_channels == 1


def test_block_location_needs_map_blocks_block_info():
    assert block_location({0: {"array-location": [(0, 4), (8, 12)]}}) == [(0, 4), (8, 12)]
    with pytest.raises(TypeError, match="block_info"):
        block_location(None)


@pytest.mark.parametrize("size, tile, hint, channels", [
    (16384, 512, 2048, 1), (16384, 512, 2048, 5), (65536, 512, 2048, 3), (2048, 512, 2048, 1),
    (5000, 256, 1000, 1), (300 * 512, 512, 512, 1),
])
def test_writer_blocks_are_whole_tiles_with_frames_enough_and_blocks_enough(size, tile, hint,
                                                                          channels):
    from daskseg.plan import FRAMES_PER_BLOCK, MIN_BLOCKS

    grid = TileGrid(size, size // 2 + 3, tile, tile)
    rows, columns = writer_block_chunks(grid, channels, (hint, hint))
    assert sum(rows) == grid.rows and sum(columns) == grid.columns
    assert all(c % tile == 0 and c <= 8 * tile for c in rows[:-1] + columns[:-1])
    start = aligned_chunks(grid.rows, tile, hint)[0], aligned_chunks(grid.columns, tile, hint)[0]
    frames = -(-rows[0] // tile) * -(-columns[0] // tile) * channels
    if (rows[0], columns[0]) != start:  # grown: only while short of frames, never below
        assert len(rows) * len(columns) >= MIN_BLOCKS  # the minimum number of blocks
        assert frames <= 2 * FRAMES_PER_BLOCK
    elif len(rows) * len(columns) >= 2 * MIN_BLOCKS and rows[0] < 8 * tile:
        assert frames >= FRAMES_PER_BLOCK  # not grown: it had frames enough


@pytest.mark.parametrize("bytes_per_pixel", [1, 2, 8, 40])
def test_writer_blocks_grow_only_within_their_byte_budget(bytes_per_pixel):
    from daskseg.plan import MAX_GROWN_BLOCK_BYTES

    grid = TileGrid(16384, 16384, 512, 512)
    rows, columns = writer_block_chunks(grid, 1, (2048, 2048), bytes_per_pixel)
    if rows[0] * columns[0] > 2048 * 2048:
        assert rows[0] * columns[0] * bytes_per_pixel <= MAX_GROWN_BLOCK_BYTES
    # 40 bytes a pixel (a stack of 40 planes) make 160 MiB chunks: halved to fit 128 MiB.
    assert (rows[0], columns[0]) == {1: (4096, 4096), 2: (4096, 4096), 8: (2048, 2048),
                                     40: (1024, 2048)}[bytes_per_pixel]


def test_a_label_map_of_small_chunks_gets_blocks_of_64_tiles():
    grid = TileGrid(16384, 16384, 512, 512)
    rows, columns = writer_block_chunks(grid, 1, (2048, 2048))
    assert (rows[0], columns[0], len(rows) * len(columns)) == (4096, 4096, 16)
    # Five segments make 80 frames of a 2048-pixel block already: the mask's chunks stay.
    assert writer_block_chunks(grid, 5, (2048, 2048))[1][0] == 2048


@pytest.mark.parametrize("planes, hint", [(117, 4096), (117, 1024), (9, 4096), (400, 512)])
def test_a_block_of_a_stack_of_many_planes_stays_within_its_bound(planes, hint):
    """All of a stack's planes are in each block: large chunks are halved to fit, whole tiles."""
    from daskseg.plan import MAX_BLOCK_BYTES

    grid = TileGrid(32768, 32768, 512, 512)
    rows, columns = writer_block_chunks(grid, planes, (hint, hint), planes)
    assert rows[0] % 512 == 0 and columns[0] % 512 == 0
    assert sum(rows) == grid.rows and sum(columns) == grid.columns
    assert rows[0] * columns[0] * planes <= max(MAX_BLOCK_BYTES, 512 * 512 * planes)
    if hint * hint * planes <= MAX_BLOCK_BYTES:
        assert (rows[0], columns[0]) == (hint, hint)  # small enough: the chunks kept
