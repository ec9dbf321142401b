"""encode_block on label images: the tiles' value ranges stand in for a pass over every frame.

The reference encodes every frame of every tile on its own, from the definition of its stored
values (``segment_frame``), so a frame whose range the tile mis-states comes out different.
"""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from daskseg import encode
from daskseg._pack import PackedBlock, pack_block
from daskseg.encode import (
    encode_block,
    encode_frame,
    encode_numpy_block,
    label_frame_range,
    segment_frame,
)
from daskseg.errors import SegmentationInputError
from daskseg.plan import FrameSpec

NATIVE = "1.2.840.10008.1.2.1"


def reference_frames(labels, spec):
    """(positions, bytes) of every frame, each made and encoded on its own."""
    th, tw = spec.tile_rows, spec.tile_columns
    n_rows, n_columns = -(-labels.shape[0] // th), -(-labels.shape[1] // tw)
    padded = np.zeros((n_rows * th, n_columns * tw, *labels.shape[2:]), labels.dtype)
    padded[: labels.shape[0], : labels.shape[1]] = labels
    positions, encoded = [], []
    for channel in range(spec.n_channels):
        for r in range(n_rows):
            for c in range(n_columns):
                tile = padded[r * th : (r + 1) * th, c * tw : (c + 1) * tw]
                frame = segment_frame(tile, spec, channel)
                if spec.omit_empty_frames and not frame.any():
                    continue
                positions.append((channel, r, c))
                encoded.append(encode_frame(np.ascontiguousarray(frame), spec))
    return positions, encoded


@st.composite
def label_blocks(draw):
    segmentation_type = draw(st.sampled_from(["BINARY", "FRACTIONAL", "LABELMAP"]))
    n_segments = draw(st.integers(1, 12))  # over 8 takes the per-tile bincount path too
    dtype = draw(st.sampled_from([np.uint8, np.uint16, np.int32, bool]))
    if dtype is bool:
        n_segments = 1
    th, tw = draw(st.integers(1, 9)), draw(st.integers(1, 9))
    rows, columns = draw(st.integers(1, 30)), draw(st.integers(1, 30))
    rng = np.random.default_rng(draw(st.integers(0, 2**16)))
    # Squares of one label, some as large as a tile: uniform tiles, tiles of two or three
    # labels with others between them, and empty tiles.
    side = draw(st.integers(1, 10))
    coarse = rng.integers(0, n_segments + 1, size=(rows // side + 1, columns // side + 1))
    labels = np.kron(coarse, np.ones((side, side), np.int64))[:rows, :columns].astype(dtype)
    spec = FrameSpec(
        segmentation_type, n_segments, False, th, tw, NATIVE,
        {"BINARY": 1, "FRACTIONAL": 8}.get(segmentation_type, draw(st.sampled_from([8, 16]))),
        draw(st.sampled_from([1, 100, 255])), draw(st.booleans()),
    )
    return labels, spec


@settings(max_examples=300, deadline=None)
@given(case=label_blocks())
def test_label_block_frames_equal_frames_encoded_one_by_one(case):
    labels, spec = case
    result = encode_block(labels, spec, 0, 0)
    positions, encoded = reference_frames(labels, spec)
    assert result.positions.tolist() == [list(p) for p in positions]
    assert result.lengths.tolist() == [len(e) for e in encoded]
    assert result.data.tobytes() == b"".join(encoded)
    th, tw = spec.tile_rows, spec.tile_columns
    n_rows, n_columns = result.tile_nonempty.shape
    for r in range(n_rows):
        for c in range(n_columns):
            tile = labels[r * th : (r + 1) * th, c * tw : (c + 1) * tw]
            assert result.tile_nonempty[r, c] == bool(tile.any())


@st.composite
def stack_blocks(draw):
    segmentation_type = draw(st.sampled_from(["BINARY", "FRACTIONAL"]))
    n_segments = draw(st.integers(2, 40))
    dtype = draw(st.sampled_from([bool, np.uint8, np.float32]))
    th, tw = draw(st.integers(1, 9)), draw(st.integers(1, 9))
    rows, columns = draw(st.integers(1, 30)), draw(st.integers(1, 30))
    rng = np.random.default_rng(draw(st.integers(0, 2**16)))
    side = draw(st.integers(1, 10))
    # Overlapping squares, some planes empty; floats in 0..1 for FRACTIONAL.
    coarse = rng.random((rows // side + 1, columns // side + 1, n_segments)) < rng.random()
    stack = np.kron(coarse, np.ones((side, side, 1)))[:rows, :columns]
    if dtype is np.float32 and segmentation_type == "FRACTIONAL":
        stack = stack * rng.random(stack.shape)
    stack = stack.astype(dtype)
    spec = FrameSpec(
        segmentation_type, n_segments, True, th, tw, NATIVE,
        {"BINARY": 1, "FRACTIONAL": 8}[segmentation_type],
        draw(st.sampled_from([1, 100, 255])), draw(st.booleans()),
    )
    # Groups of a few planes, copied a row or a few at a time.
    group_planes, step_rows = draw(st.integers(1, n_segments + 1)), draw(st.integers(1, 4))
    return stack, spec, group_planes, step_rows


@settings(max_examples=200, deadline=None)
@given(case=stack_blocks())
def test_stack_block_frames_equal_frames_encoded_one_by_one(case):
    # A stack's tiles are cut planes-first, a group of planes at a time, the frames then put
    # back in file order (segment, tile row, tile column).
    stack, spec, group_planes, step_rows = case
    plane_bytes = spec.tile_rows * spec.tile_columns * stack.dtype.itemsize
    row_bytes = spec.tile_columns * stack.shape[2] * stack.dtype.itemsize
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(encode, "_CUT_GROUP_BYTES", group_planes * plane_bytes)
        patch.setattr(encode, "_TRANSPOSE_BYTES", step_rows * row_bytes)
        result = encode_block(stack, spec, 0, 0)
    positions, encoded = reference_frames(stack, spec)
    assert result.positions.tolist() == [list(p) for p in positions]
    assert result.lengths.tolist() == [len(e) for e in encoded]
    assert result.data.tobytes() == b"".join(encoded)


def test_the_label_named_is_the_one_at_the_pixel_named():
    labels = np.zeros((8, 8), np.uint8)
    labels[1, 1], labels[2, 2] = 7, 9  # one tile, two labels out of range
    spec = FrameSpec("LABELMAP", 5, False, 4, 4, NATIVE, 8, 255, False)
    with pytest.raises(SegmentationInputError, match="label 7 at row 1, column 1,"):
        encode_block(labels, spec, 0, 0)


def test_a_boolean_label_image_stores_label_1_only_when_segment_1_is_described():
    """True is label 1, as highdicom reads a boolean image: a LABELMAP whose one segment is
    numbered 5 stored 1, which no segment describes (highdicom refuses the input)."""
    labels = np.zeros((8, 8), bool)
    labels[5, 6] = True
    one = FrameSpec("LABELMAP", 1, False, 4, 4, NATIVE, 8, 255, False, label_numbers=(5,))
    with pytest.raises(SegmentationInputError, match="label 1 at row 5, column 6, but the "
                                                     r"segments described are numbered \[5\]"):
        encode_block(labels, one, 0, 0)
    both = FrameSpec("LABELMAP", 2, False, 4, 4, NATIVE, 8, 255, False, label_numbers=(1, 5))
    assert encode_block(labels, both, 0, 0).tile_nonempty.tolist() == [[False, False],
                                                                       [False, True]]


@pytest.mark.parametrize("value, message", [(-3, "negative"), (7, "label 7")])
def test_label_block_out_of_range_is_refused_where_it_is(value, message):
    labels = np.zeros((10, 10), np.int16)
    labels[9, 9] = value  # in the padded edge tile of 4 x 4 tiles
    spec = FrameSpec("LABELMAP", 5, False, 4, 4, NATIVE, 8, 255, False)
    with pytest.raises(SegmentationInputError, match=message) as error:
        encode_block(labels, spec, 2, 3)
    assert "at row 17, column 21" in str(error.value)  # the block starts at row 8, column 12


def test_frame_range_from_the_tile_range():
    binary = FrameSpec("BINARY", 5, False, 4, 4, NATIVE, 1, 255, False)
    fractional = FrameSpec("FRACTIONAL", 5, False, 4, 4, NATIVE, 8, 100, False)
    assert label_frame_range(3, 3, binary, 2) == (1, 1)  # a tile all of segment 3
    assert label_frame_range(3, 3, fractional, 2) == (100, 100)
    assert label_frame_range(3, 3, binary, 0) == (0, 0)
    assert label_frame_range(2, 4, binary, 0) == (0, 0)  # segment 1 below the tile's labels
    assert label_frame_range(2, 4, binary, 4) == (0, 0)
    assert label_frame_range(2, 4, binary, 1) == (0, 1)  # the lowest label is there
    assert label_frame_range(2, 4, fractional, 3) == (0, 100)
    assert label_frame_range(2, 4, binary, 2) is None  # segment 3 may or may not be


@pytest.mark.parametrize("dtype", [np.uint8, ">u2", np.int32, bool])
def test_a_packed_block_unpacks_to_the_block(dtype):
    labels = np.zeros((40, 64, 48), dtype)
    labels[5:30, 10:50, 3:20] = 1
    view = labels[::-1, :, 4:44]  # not contiguous: packed from a copy
    for block in (labels, view):
        packed = pack_block(block)
        assert isinstance(packed, PackedBlock)
        assert len(packed.data) < block.nbytes // 50
        unpacked = packed.unpack()
        assert unpacked.dtype == block.dtype and unpacked.shape == block.shape
        np.testing.assert_array_equal(unpacked, block)


def test_a_block_that_does_not_compress_or_is_small_travels_as_it_is():
    noise = np.random.default_rng(0).random((256, 256), dtype=np.float32)
    assert pack_block(noise) is noise
    small = np.zeros((8, 8), np.uint8)
    assert pack_block(small) is small


def test_a_packed_block_is_encoded_as_the_block():
    labels = np.zeros((8, 128, 128), np.uint8)  # slices of a volume, encoded as a tall image
    labels[1:6, 8:40, 16:100] = 2
    spec = FrameSpec("LABELMAP", 2, False, 128, 128, NATIVE, 8, 255, False)
    packed = pack_block(labels)
    assert isinstance(packed, PackedBlock)
    direct = encode_numpy_block(spec, (1024, 128), None, labels, 0, 0)[0, 0]
    unpacked = encode_numpy_block(spec, (1024, 128), None, packed, 0, 0)[0, 0]
    assert unpacked.data.tobytes() == direct.data.tobytes()
    assert unpacked.positions.tolist() == direct.positions.tolist()
