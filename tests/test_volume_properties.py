"""Property-based differential test: SEGs of random CT series equal highdicom's, element by element.

Each example draws a series (its size, orientation, slice spacing with or without a gap, the
order its images are given in, or one multi-frame image), a mask (labels or a stack of planes,
of several dtypes, with empty slices and segments absent from some; as numpy, Dask in random
chunks or Zarr), a type and transfer syntax, ``omit_empty_frames`` and FRACTIONAL's options.
daskseg and highdicom's ``Segmentation`` write it; ``assert_same_seg`` compares every element,
every stored frame and the pixels by source instance (or frame), and daskseg's reader of the
file, with random options, must give what highdicom's does.
"""

from __future__ import annotations

import functools
import random
import re

import dask.array as da
import highdicom as hd
import numpy as np
import pydicom
import pytest
import zarr
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from _reading import as_highdicom_means, draw_read_options
from test_volume_write import assert_same_seg, enhanced_image, write_both
from test_write import MATRIX

from daskseg import SegmentationInputError, read_segmentation, write_segmentation
from daskseg.synthetic import make_ct_series, make_segment_descriptions

J2K_SYNTAXES = {pydicom.uid.JPEG2000Lossless, pydicom.uid.HTJ2KLossless}
ORIENTATIONS = [
    (1.0, 0.0, 0.0, 0.0, 1.0, 0.0),  # axial
    (0.0, 1.0, 0.0, 0.0, 0.0, -1.0),  # sagittal
    (1.0, 0.0, 0.0, 0.0, 0.0, -1.0),  # coronal
    (0.8660254037844387, 0.5, 0.0, -0.5, 0.8660254037844387, 0.0),  # oblique about z
]


@st.composite
def volume_cases(draw):
    segmentation_type, syntax = draw(st.sampled_from(MATRIX))
    # JPEG 2000 frames of at least 32 x 32 pixels; JPEG-LS in highdicom (pydicom's pyjpegls
    # plugin) fails on tiny frames whose codestream is larger than their pixels.
    low = {pydicom.uid.JPEGLSLossless: 16}.get(syntax, 32 if syntax in J2K_SYNTAXES else 4)
    slices = draw(st.integers(1, 20))
    rows, columns = draw(st.integers(low, low + 24)), draw(st.integers(low, low + 24))
    # One frame of a legacy converted image has its plane position in the shared functional
    # groups, where highdicom does not look (AttributeError): two frames at least.
    multiframe = slices > 1 and draw(st.integers(0, 4)) == 0
    if multiframe:
        series = [enhanced_image(slices, rows, columns)]  # its frames out of slice order
    else:
        orientation = draw(st.sampled_from(ORIENTATIONS))
        spacing = draw(st.sampled_from([0.5, 1.25, 3.0]))
        series = make_ct_series(slices, rows, columns, orientation=orientation,
                                slice_spacing=spacing)
        if slices > 2 and draw(st.booleans()):
            # A gap: the slices after it one spacing further on (not a regular volume).
            normal = np.cross(orientation[:3], orientation[3:])
            for image in series[draw(st.integers(1, slices - 1)):]:
                moved = np.asarray(image.ImagePositionPatient, float) + spacing * normal
                image.ImagePositionPatient = [f"{value:.6g}" for value in moved]
        order = draw(st.sampled_from(["along the normal", "against it", "shuffled"]))
        if order == "against it":
            series.reverse()
        elif order == "shuffled":
            random.Random(draw(st.integers(0, 2**16))).shuffle(series)
    n_segments = draw(st.integers(1, 3))
    rng = np.random.default_rng(draw(st.integers(0, 2**16)))
    # Blocks of labels, about a slice in three left empty.
    coarse = rng.integers(0, n_segments + 1, size=(slices, rows // 8 + 1, columns // 8 + 1))
    labels = np.kron(coarse, np.ones((1, 8, 8), np.int64))[:, :rows, :columns].astype(np.uint8)
    labels[rng.random(slices) < 0.3] = 0
    if segmentation_type == "FRACTIONAL":
        planes = np.stack([labels == n for n in range(1, n_segments + 1)], axis=-1)
        mask = planes * rng.uniform(0.1, 1.0, size=planes.shape)
        mask = mask.astype(draw(st.sampled_from([np.float32, np.float64])))
    elif segmentation_type == "BINARY" and draw(st.booleans()):
        mask = np.stack([labels == n for n in range(1, n_segments + 1)], axis=-1)
        mask = mask.astype(draw(st.sampled_from([np.uint8, np.bool_])))
    else:
        kinds = [np.uint8, np.uint16, np.int32, np.int64] + [np.bool_] * (n_segments == 1)
        mask = labels.astype(draw(st.sampled_from(kinds)))
    form = draw(st.sampled_from(["numpy", "dask", "zarr"]))
    chunks = (draw(st.integers(1, slices)), *mask.shape[1:])
    options = {"omit_empty_frames": draw(st.booleans())}
    if segmentation_type == "FRACTIONAL":
        options["max_fractional_value"] = draw(st.sampled_from([1, 7, 100, 255]))
        options["fractional_type"] = draw(st.sampled_from(["PROBABILITY", "OCCUPANCY"]))
    return dict(series=series, mask=mask, form=form, chunks=chunks, multiframe=multiframe,
                segmentation_type=segmentation_type, syntax=syntax, options=options)


@settings(max_examples=40, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(case=volume_cases(), data=st.data())
def test_a_random_series_seg_equals_highdicoms(tmp_path_factory, thread_client, case, data):
    tmp_path = tmp_path_factory.mktemp("volume")
    mask = case["mask"]
    # highdicom takes bool, uint8, uint16 and floats; daskseg also other integers, by value.
    theirs_mask = mask.astype(np.uint8) if mask.dtype in (np.int32, np.int64) else mask
    if case["form"] == "dask":
        ours = da.from_array(mask, chunks=case["chunks"])
    elif case["form"] == "zarr":
        ours = zarr.create_array(str(tmp_path / "mask.zarr"), shape=mask.shape, dtype=mask.dtype,
                                 chunks=case["chunks"])
        ours[...] = mask
    else:
        ours = mask
    seg, theirs = write_both(tmp_path, thread_client, case["series"], theirs_mask,
                             case["segmentation_type"], case["syntax"], ours_mask=ours,
                             **case["options"])
    assert_same_seg(seg, theirs, case["series"], tmp_path, multiframe=case["multiframe"])

    # daskseg's reader of the file with random options, as highdicom reads it (its errors
    # included), every source image or frame in turn.
    path = tmp_path / "ours.dcm"
    described = [int(item.SegmentNumber) for item in seg.SegmentSequence]
    options = draw_read_options(data, described)
    highdicom_view = hd.seg.segread(path)
    if case["multiframe"]:
        image = case["series"][0]
        frames = list(range(1, int(image.NumberOfFrames) + 1))
        highdicom_read = functools.partial(
            highdicom_view.get_pixels_by_source_frame, image.SOPInstanceUID, frames,
            assert_missing_frames_are_empty=True)
        ours_read = functools.partial(read_segmentation, path, source_frame_numbers=frames)
    else:
        uids = [image.SOPInstanceUID for image in case["series"]]
        highdicom_read = functools.partial(highdicom_view.get_pixels_by_source_instance, uids)
        ours_read = functools.partial(read_segmentation, path, source_sop_instance_uids=uids)
    try:
        expected = highdicom_read(**options)
    except (RuntimeError, ValueError) as error:  # overlap, fractions cannot be combined, ...
        with pytest.raises(type(error)):
            ours_read(**options).compute(scheduler="threads")
        return
    expected = as_highdicom_means(expected, case["segmentation_type"], options, len(described))
    got = ours_read(**options).compute(scheduler="threads")
    assert got.dtype == expected.dtype, options
    np.testing.assert_array_equal(got, expected)


@settings(max_examples=20, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(data=st.data())
def test_a_bad_value_in_any_slice_is_refused_and_leaves_nothing(tmp_path_factory,
                                                               thread_client, data):
    """A label no segment describes, a 2 in a binary stack, or a fraction outside [0, 1] (or
    NaN), in any slice of a series given in any order, in numpy or Dask: a daskseg
    SegmentationInputError, and nothing left in the destination's folder."""
    slices, rows, columns = (data.draw(st.integers(1, 8)), data.draw(st.integers(2, 30)),
                             data.draw(st.integers(2, 30)))
    series = make_ct_series(slices, rows, columns)
    random.Random(data.draw(st.integers(0, 2**16))).shuffle(series)
    rng = np.random.default_rng(data.draw(st.integers(0, 2**16)))
    labels = rng.integers(0, 4, size=(slices, rows, columns))
    where = tuple(data.draw(st.integers(0, n - 1)) for n in (slices, rows, columns))
    kind = data.draw(st.sampled_from(["label", "binary stack", "fraction"]))
    if kind == "label":
        segmentation_type = data.draw(st.sampled_from(["BINARY", "LABELMAP"]))
        mask = labels.astype(np.uint8)
        mask[where] = data.draw(st.integers(4, 250))
    elif kind == "binary stack":
        segmentation_type = "BINARY"
        mask = np.stack([labels == n for n in (1, 2, 3)], -1).astype(np.uint8)
        mask[(*where, data.draw(st.integers(0, 2)))] = 2
    else:
        segmentation_type = "FRACTIONAL"
        mask = np.stack([labels == n for n in (1, 2, 3)], -1).astype(np.float32)
        mask[(*where, data.draw(st.integers(0, 2)))] = data.draw(st.sampled_from(
            [-0.5, 1.001, np.nan]))
    if data.draw(st.booleans()):
        mask = da.from_array(mask, chunks=(data.draw(st.integers(1, slices)), *mask.shape[1:]))
    folder = tmp_path_factory.mktemp("bad")
    with pytest.raises(SegmentationInputError) as refused:
        write_segmentation(mask, series,
                           make_segment_descriptions(3, segmentation_type=segmentation_type),
                           folder / "seg.dcm", segmentation_type=segmentation_type,
                           client=thread_client)
    assert list(folder.iterdir()) == []
    # The message names the mask frame as given (or a few frames, the bad one among them).
    named = re.search(r"mask frames? ((?:\d+, )*\d+)", str(refused.value))
    assert named is not None and where[0] in map(int, named.group(1).split(", ")), refused.value
