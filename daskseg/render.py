"""A picture of a SEG: its segments in their display colours, over the slide or on their own."""

from __future__ import annotations

import math
import os
from typing import Any

import numpy as np

from daskseg._colors import segment_rgb
from daskseg.errors import MissingDependencyError, SegmentationInputError, SegmentationTypeError
from daskseg.read import SegmentationReader

__all__ = ["show_segmentation"]


# A region of at most this many tiles is read a tile a chunk (a task each: more of them cost
# the scheduler more than decoding the frames around a larger region's edges).
_MAX_TILE_CHUNKS = 64


def _slices(region: Any, shape: tuple[int, int]) -> tuple[slice, slice]:
    if region is None:
        return slice(0, shape[0]), slice(0, shape[1])
    try:
        rows, columns = (part if isinstance(part, slice) else slice(*part) for part in region)
        negative = any(value is not None and value < 0
                       for part in (rows, columns) for value in (part.start, part.stop))
        rows, columns = slice(*rows.indices(shape[0])[:2]), slice(*columns.indices(shape[1])[:2])
    except (TypeError, ValueError):
        raise SegmentationTypeError(
            f"region is ((row_start, row_stop), (column_start, column_stop)) or two slices, "
            f"not {region!r}."
        ) from None
    if negative:  # numpy's count from the end would draw another place than the one meant
        raise SegmentationInputError(
            f"The region {region} starts or stops before row or column 0; a region counts "
            f"pixels from 0 (the SEG is {shape[0]} x {shape[1]})."
        )
    if rows.stop <= rows.start or columns.stop <= columns.start:
        raise SegmentationInputError(f"The region {region} is empty in a SEG of shape {shape}.")
    return rows, columns


def show_segmentation(
    seg: str | os.PathLike | SegmentationReader,
    *,
    region: Any = None,
    image: np.ndarray | None = None,
    max_pixels: int = 1024,
    alpha: float = 0.6,
    legend: bool = True,
    ax: Any = None,
):
    """Draw a SEG (or a region of it) with matplotlib, each segment in its display colour.

    Segments that overlap are drawn one over another, in the order of their numbers; a
    FRACTIONAL segment's fraction is its opacity.

    Parameters
    ----------
    seg : str, os.PathLike or SegmentationReader
        The SEG file or an opened one.
    region : ((row_start, row_stop), (column_start, column_stop)) or (slice, slice), optional
        The part of the total pixel matrix to draw; all of it by default. Only the frames it
        touches are decoded.
    image : numpy.ndarray, optional
        A picture of the same region of the source (grey or RGB, any size, e.g. a thumbnail)
        to draw under the segments; without it the segments are drawn on white.
    max_pixels : int
        Longest side of the picture drawn: the region is subsampled (nearest neighbour) to fit.
    alpha : float
        Opacity of the segments over ``image``.
    legend : bool
        Name each segment's colour with its SegmentLabel.
    ax : matplotlib.axes.Axes, optional
        Where to draw; a new figure by default.

    Returns
    -------
    matplotlib.axes.Axes
        Axes in pixel coordinates of the total pixel matrix.

    Raises
    ------
    MissingDependencyError
        matplotlib is not installed (``pip install 'daskseg[notebook]'``).
    SegmentationInputError
        The region is empty, or the SEG cannot be read.
    """
    try:
        import matplotlib.pyplot as plt
        from matplotlib.patches import Patch
    except ImportError as error:
        raise MissingDependencyError(
            "show_segmentation needs matplotlib: pip install 'daskseg[notebook]'."
        ) from error
    reader = seg if isinstance(seg, SegmentationReader) else SegmentationReader(seg)
    rows, columns = _slices(region, reader.shape)
    step = max(1, math.ceil(max(rows.stop - rows.start, columns.stop - columns.start) / max_pixels))
    colors = segment_rgb(reader.segment_descriptions)
    opacity = alpha if image is not None else 1.0
    # A region of a few tiles is read in chunks of one tile, so that only the frames under it
    # are decoded (the reader's default chunks of ~2048² decoded 256 frames for 16).
    tile_rows, tile_columns = reader.tile_size
    touched = (math.ceil(rows.stop / tile_rows) - rows.start // tile_rows) * (
        math.ceil(columns.stop / tile_columns) - columns.start // tile_columns)
    chunks = reader.tile_size if region is not None and touched <= _MAX_TILE_CHUNKS else None
    if reader.segmentation_type == "LABELMAP":
        labels = reader.to_dask(combine_segments=True, chunks=chunks)[rows, columns][
            ::step, ::step].compute()
        lookup = np.zeros((max(max(colors), int(labels.max(initial=0))) + 1, 4), dtype=np.float32)
        for number, rgb in colors.items():
            lookup[number] = (*(c / 255 for c in rgb), opacity)
        picture = lookup[labels]
    else:
        # Segment by segment, each over the ones before (BINARY segments may overlap; a
        # FRACTIONAL one's fraction is its opacity): one label image could show neither.
        planes = reader.to_dask(chunks=chunks)[rows, columns][::step, ::step].compute()
        shade = np.zeros((*planes.shape[:2], 3), dtype=np.float32)  # premultiplied colour
        cover = np.zeros(planes.shape[:2], dtype=np.float32)
        for k, number in enumerate(reader.segment_numbers):
            weight = planes[..., k].astype(np.float32) * opacity
            shade = shade * (1 - weight[..., None]) + np.multiply.outer(
                weight, np.asarray(colors[number], dtype=np.float32) / 255)
            cover = weight + cover * (1 - weight)
        picture = np.dstack([shade / np.maximum(cover, 1e-6)[..., None], cover])
    if ax is None:
        _, ax = plt.subplots(figsize=(6, 6 * picture.shape[0] / max(picture.shape[1], 1)))
    extent = (columns.start, columns.stop, rows.stop, rows.start)
    if image is not None:
        ax.imshow(image, cmap="gray" if image.ndim == 2 else None, extent=extent)
    ax.imshow(picture, extent=extent, interpolation="nearest")
    if legend:
        names = {n: str(d.SegmentLabel) for n, d in zip(reader.segment_numbers, reader.segment_descriptions)}
        fractions = {n: (r / 255, g / 255, b / 255) for n, (r, g, b) in colors.items()}
        ax.legend(handles=[Patch(color=fractions[n], label=f"{n}: {names[n]}")
                           for n in reader.segment_numbers],
                  loc="upper right", fontsize="small", framealpha=0.8)
    ax.set_xlim(columns.start, columns.stop)
    ax.set_ylim(rows.stop, rows.start)
    return ax
