"""Random reader options, and highdicom's answer to them, for the readers' property tests."""

from __future__ import annotations

import numpy as np
from hypothesis import strategies as st


def draw_read_options(data, numbers):
    """Options of highdicom's and daskseg's readers, drawn with ``data`` (``st.data()``):
    a subset of the segment ``numbers`` in any order (or all), combining, relabelling,
    rescaling and a dtype."""
    numbers = data.draw(st.permutations(list(numbers)))
    options = {
        "segment_numbers": data.draw(st.none() | st.integers(1, len(numbers)).map(
            lambda count: numbers[:count])),
        "combine_segments": data.draw(st.booleans()),
        "rescale_fractional": data.draw(st.booleans()),
        "dtype": data.draw(st.sampled_from([None, np.uint8, np.uint16, np.int32, np.float32])),
    }
    options["relabel"] = options["combine_segments"] and data.draw(st.booleans())
    return options


def as_highdicom_means(expected, segmentation_type, options, n_described):
    """highdicom's values, but for its bug: combining a LABELMAP's segments without relabelling,
    with all but one asked for, highdicom 0.28 keeps the one left out in the labels (it remaps
    when ``len(setxor1d(asked, all)) > 1``, not ``> 0``); two or more it removes."""
    requested = options["segment_numbers"]
    if (segmentation_type == "LABELMAP" and options["combine_segments"]
            and not options["relabel"] and requested is not None
            and len(requested) == n_described - 1):
        return np.where(np.isin(expected, requested), expected, 0).astype(expected.dtype)
    return expected
