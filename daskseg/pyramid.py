"""Levels from a mask: multi-resolution SEG pyramids for whole-slide viewers, out of core.

Each level is resampled from the full-resolution mask as highdicom's
``create_segmentation_pyramid`` resamples it with Pillow: nearest neighbour for BINARY and
LABELMAP masks (and any integer or boolean mask), bilinear for floating-point FRACTIONAL masks.
Every output block is computed from just the region of the mask it needs (with the halo that
bilinear filtering reads), and each level streams through :func:`write_segmentation`. Each
level is resampled from the full-resolution mask, not from the level above, because only that
gives highdicom's pixels; so the mask is read once per level.
"""

from __future__ import annotations

import contextlib
import datetime
import math
import numbers
import operator
import os
import pathlib
import uuid
from collections.abc import Sequence
from typing import Any

import dask.array as da
from dask.base import tokenize
from dask.highlevelgraph import HighLevelGraph
import highdicom as hd
import numpy as np
from pydicom.dataset import Dataset

from daskseg._file import replace_atomically
from daskseg._source import load_source_image
from daskseg.errors import DestinationExistsError, SegmentationInputError, SegmentationTypeError
from daskseg.plan import aligned_chunks, block_location, chunks_of
from daskseg._inputs import (
    MaskLike,
    as_dask_array,
    check_numbers,
    check_uids,
    drop_leading_axis,
    not_a_regular_file,
    parse_segmentation_type,
    tile_size,
)
from daskseg.write import write_segmentation

__all__ = ["write_segmentation_pyramid"]


def nearest_indices(size_in: int, size_out: int, half_steps: bool = False) -> np.ndarray:
    """Source index of each output pixel, as Pillow's NEAREST resize picks it.

    Pillow (``ImagingScaleAffine``) starts at half a step and adds the step once per pixel in
    double precision; a cumulative sum rounds the same way, where ``(x + 0.5) * scale`` would
    sometimes pick the neighbouring pixel. But in its 16-bit mode (``I;16``, what a uint16
    mask becomes in highdicom's hands) Pillow takes ``floor((x + 0.5) * scale)``: with
    ``half_steps``. Measured on 7,021 pairs of sizes, each rule matches its modes exactly and
    the other misses 994.
    """
    scale = size_in / size_out
    if half_steps:
        picked = np.floor((np.arange(size_out) + 0.5) * scale).astype(np.int64)
        return np.minimum(picked, size_in - 1)
    steps = np.full(size_out, scale)
    steps[0] = scale * 0.5
    return np.minimum(np.cumsum(steps).astype(np.int64), size_in - 1)


def _half_steps(dtype: np.dtype) -> bool:
    """Whether Pillow resizes a mask of ``dtype`` in its 16-bit mode (see nearest_indices)."""
    return dtype.kind == "u" and dtype.itemsize == 2


def _pick_nearest(block: np.ndarray, shape_in: tuple[int, int], shape_out: tuple[int, int],
                  block_info: dict | None = None) -> np.ndarray:
    """The pixels of one chunk of the mask that nearest-neighbour resampling keeps."""
    (r0, r1), (c0, c1) = block_location(block_info)[:2]
    half = _half_steps(block.dtype)
    rows = nearest_indices(shape_in[0], shape_out[0], half)
    columns = nearest_indices(shape_in[1], shape_out[1], half)
    rows = rows[(rows >= r0) & (rows < r1)] - r0
    columns = columns[(columns >= c0) & (columns < c1)] - c0
    return block[rows][:, columns]


def bilinear_weights(size_in: int, size_out: int, first: int = 0,
                     stop: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """First source index and weights of output pixels ``first:stop`` (all by default), as
    Pillow's BILINEAR resize computes them (its ``precompute_coeffs``), to the last bit.

    Pillow widens the triangle filter by the reduction factor when downsampling (its
    ``ImagingResample``), so an output pixel averages a neighbourhood, not just 2 x 2 pixels.
    """
    scale = size_in / size_out
    filter_scale = max(scale, 1.0)
    support = filter_scale
    width = int(math.ceil(support)) * 2 + 1
    center = (np.arange(first, size_out if stop is None else stop) + 0.5) * scale
    # Truncated towards zero, as C's (int).
    low = np.maximum((center - support + 0.5).astype(np.int64), 0)
    high = np.minimum((center + support + 0.5).astype(np.int64), size_in)
    taps = low[:, None] + np.arange(width)
    # Times the reciprocal, as Pillow: dividing differs in the last bit for factors such as
    # 97 / 48, and so did a few pixels.
    weights = np.clip(1.0 - np.abs((taps - center[:, None] + 0.5) * (1.0 / filter_scale)),
                      0.0, None)
    weights[taps >= high[:, None]] = 0.0
    # Summed in order, as Pillow sums (numpy sums 8 or more pairwise).
    total = np.cumsum(weights, axis=1)[:, -1:]
    np.divide(weights, total, out=weights, where=total != 0)
    return low, weights


def _resample_axis(block: np.ndarray, axis: int, starts: np.ndarray, weights: np.ndarray,
                   offset: int) -> np.ndarray:
    """Bilinear resampling along one axis of a region that starts at ``offset`` of the mask.

    Sums in double precision and stores float32, as Pillow does for 32-bit float images.
    """
    moved = np.moveaxis(block, axis, 0).astype(np.float32).astype(np.float64)
    out = np.zeros((len(starts),) + moved.shape[1:], dtype=np.float64)
    for k in range(weights.shape[1]):
        # Taps past the end have weight 0: any valid index serves them.
        index = np.minimum(starts - offset + k, moved.shape[0] - 1)
        out += weights[:, k].reshape((-1,) + (1,) * (moved.ndim - 1)) * moved[index]
    return np.moveaxis(out.astype(np.float32), 0, axis)


def _edges(chunks: Sequence[int]) -> list[tuple[int, int]]:
    ends = np.cumsum(chunks)
    return [(int(end - size), int(end)) for size, end in zip(chunks, ends)]


# A bilinear task's working set: its input in the mask's type, float32 and float64 copies of it
# and sums the size of its output, about 24 bytes a value; kept near _RESAMPLE_BYTES whatever the
# slide's width and segments (a top level's task read 256 rows of the whole slide with every
# segment: 0.8 GiB for 16 segments of an 8192-pixel slide). A task reads at most _MAX_SPAN
# pixels along the axis it resamples, or one output pixel's taps, and _MAX_BAND along the other.
_RESAMPLE_BYTES = 64 * 2**20
_JOINED_BYTES = 32 * 2**20
_BYTES_PER_VALUE = 24
_MAX_SPAN = 2048
_MAX_BAND = 256


def _pieces(edges: Sequence[tuple[int, int]], step: int) -> list[tuple[int, int]]:
    """Each of ``edges`` cut into the fewest pieces of at most ``step``, of near equal length."""
    pieces = []
    for low, high in edges:
        if high == low:  # a chunk of no pixels (Dask makes them): no piece
            continue
        count = -(-(high - low) // step)
        cuts = [low + (high - low) * k // count for k in range(count + 1)]
        pieces += list(zip(cuts[:-1], cuts[1:]))
    return pieces


def _overlapping(ends: np.ndarray, low: int, high: int) -> list[tuple[int, int, int]]:
    """The chunks (index, start, stop within the chunk) that hold ``low:high`` of an axis whose
    chunks end at ``ends``."""
    first = int(np.searchsorted(ends, low, side="right"))
    last = int(np.searchsorted(ends, high - 1, side="right"))
    starts = np.concatenate(([0], ends[:-1]))
    return [(k, max(low, int(starts[k])) - int(starts[k]), min(high, int(ends[k])) - int(starts[k]))
            for k in range(first, last + 1)]


def _resample_region(parts: list[list[np.ndarray]], axis: int, size_in: int, size_out: int,
                     first: int, stop: int, offset: int) -> np.ndarray:
    """Output pixels ``first:stop`` along ``axis`` of a region joined from ``parts`` (rows of
    pieces of chunks) that starts at ``offset`` along it."""
    region = np.concatenate([np.concatenate(row, axis=1) for row in parts], axis=0)
    starts, weights = bilinear_weights(size_in, size_out, first, stop)
    return _resample_axis(region, axis, starts, weights, offset)


def _bilinear_pass(array: da.Array, axis: int, size_out: int,
                   out_chunks: tuple[int, ...]) -> da.Array:
    """Bilinear resampling of one axis: each output block reads the input span it needs.

    Output chunks are cut into pieces whose input span along ``axis`` is at most
    ``_MAX_SPAN``, the other axis into bands that keep a task near ``_RESAMPLE_BYTES``. One
    task a piece, reading the parts of the chunks it needs, in one layer of the graph: a
    Dask slice, rechunk and block per piece made tens of thousands of layers for a large slide
    (a 65536-pixel level took minutes to build). The result comes in those pieces.
    """
    size_in = array.shape[axis]
    other = 1 - axis
    extra = array.shape[2:]
    starts, weights = bilinear_weights(size_in, size_out)
    scale = size_in / size_out
    out_edges = _pieces(_edges(out_chunks),
                        max(1, int((_MAX_SPAN - weights.shape[1]) // scale)))
    spans = [(int(starts[o0]), min(int(starts[o1 - 1]) + weights.shape[1], size_in))
             for o0, o1 in out_edges]
    longest = max(high - low for low, high in spans)
    band = _RESAMPLE_BYTES // (longest * math.prod(extra) * _BYTES_PER_VALUE)
    other_edges = _pieces(_edges(array.chunks[other]), max(1, min(_MAX_BAND, band)))

    ends = [np.cumsum(array.chunks[dimension]) for dimension in (0, 1)]
    zeros = (0,) * len(extra)
    name = "bilinear-" + tokenize(array.name, axis, size_out, out_edges, other_edges)
    # The chunks each span and each band cross, found once, not for every task.
    along = [_overlapping(ends[axis], low, high) for low, high in spans]
    across = [_overlapping(ends[other], q0, q1) for q0, q1 in other_edges]
    graph: dict[Any, Any] = {}
    for i, ((o0, o1), (low, _)) in enumerate(zip(out_edges, spans)):
        for j in range(len(other_edges)):
            ranges: list[Any] = [None, None]
            ranges[axis], ranges[other] = along[i], across[j]
            parts = [[(operator.getitem, (array.name, r, c, *zeros), (slice(r0, r1), slice(c0, c1)))
                      for c, c0, c1 in ranges[1]] for r, r0, r1 in ranges[0]]
            index = (i, j) if axis == 0 else (j, i)
            graph[(name, *index, *zeros)] = (_resample_region, parts, axis, size_in, size_out,
                                             o0, o1, low)
    chunks: list[Any] = [None, None]
    chunks[axis] = tuple(o1 - o0 for o0, o1 in out_edges)
    chunks[other] = tuple(q1 - q0 for q0, q1 in other_edges)
    layers = HighLevelGraph.from_collections(name, graph, dependencies=[array])
    return da.Array(layers, name, chunks=(*chunks, *((n,) for n in extra)), dtype=np.float32)


def downsample(mask: da.Array, shape: tuple[int, int], method: str,
               chunks: tuple[tuple[int, ...], tuple[int, ...]]) -> da.Array:
    """Resample a (rows, columns[, segments]) Dask array to ``shape``, block by block.

    Nearest neighbour picks rows and columns chunk by chunk, in the task that reads the
    chunk, so only the pixels a level keeps leave it; the level comes in ``chunks``. Bilinear
    resampling runs as Pillow does, one axis after the other in Pillow's order, each pass in
    tasks that read the span of input their filter covers; the level comes in pieces of
    ``chunks`` (see :func:`_bilinear_pass`).
    """
    if method == "nearest":
        # Each source chunk gives the rows and columns it holds that the level keeps (one task,
        # fused with the chunk's read); the small pieces are then joined into the level's blocks.
        half = _half_steps(mask.dtype)
        counts = [
            np.diff(np.searchsorted(nearest_indices(size, size_out, half),
                                    np.cumsum((0, *sizes))))
            for size, size_out, sizes in zip(mask.shape[:2], shape, mask.chunks[:2])
        ]
        picked = mask.map_blocks(
            _pick_nearest, tuple(mask.shape[:2]), tuple(shape), dtype=mask.dtype,
            chunks=(tuple(int(n) for n in counts[0]), tuple(int(n) for n in counts[1]),
                    *mask.chunks[2:]),
        )
        return picked.rechunk(chunks + mask.shape[2:])
    extra = mask.shape[2:]
    if any(len(c) > 1 for c in mask.chunks[2:]):  # a task reads every segment of its region
        mask = mask.rechunk(mask.chunks[:2] + extra)
    first = 0 if _rows_first(mask.shape[:2], shape) else 1
    second = 1 - first
    once = _bilinear_pass(mask, first, shape[first], chunks[first])
    # The first pass's pieces joined into bands across the level's chunks, so that the second
    # pass goes through the mask a band at a time: in the first pass's narrow pieces it went
    # strip by strip, holding chunks of the mask the strips shared (0.52 against 0.15 GiB for
    # a 1/64 level of 8192 x 8192 pixels and 16 segments). Bands of at most _JOINED_BYTES.
    joined: list[Any] = [None, None]
    joined[first] = chunks[first]
    band = _JOINED_BYTES // (max(chunks[first]) * math.prod(extra) * 4)
    joined[second] = chunks_of(mask.shape[second], max(1, min(band, max(mask.chunks[second]))))
    once = once.rechunk((*joined, *extra))
    # The level comes in the second pass's pieces (write_segmentation makes its blocks of
    # them): joined into the level's chunks, 2048 x 2048 with every segment, they would hold
    # 256 MiB each for 16 segments.
    return _bilinear_pass(once, second, shape[second], chunks[second])


def _rows_first(shape_in: tuple[int, ...], shape_out: tuple[int, ...]) -> bool:
    """Whether Pillow resamples the rows before the columns, which changes the float32 values
    it keeps between the passes: Pillow 13 does when the height loses more than twice as many
    pixels as the width (its ``ImagingResampleInner``), earlier versions never."""
    import PIL

    lost_rows, lost_columns = shape_in[0] - shape_out[0], shape_in[1] - shape_out[1]
    return (int(PIL.__version__.split(".")[0]) >= 13
            and lost_rows > 0 and lost_rows > 2 * lost_columns)


def write_segmentation_pyramid(
    mask: MaskLike,
    source_images: Sequence[Dataset | str | os.PathLike],
    segment_descriptions: Sequence[hd.seg.SegmentDescription],
    folder: str | os.PathLike,
    *,
    downsample_factors: Sequence[float] | None = None,
    series_instance_uid: str | None = None,
    pyramid_uid: str | None = None,
    pyramid_label: str | None = None,
    segmentation_type: str | hd.seg.SegmentationTypeValues = "BINARY",
    sop_instance_uids: Sequence[str] | None = None,
    **options: Any,
) -> list[pathlib.Path]:
    """Write a multi-resolution pyramid of SEGs, one file per level, in one series.

    Parameters
    ----------
    mask : dask.array.Array, zarr.Array, str, os.PathLike or numpy.ndarray
        The full-resolution mask, as for :func:`write_segmentation`.
    source_images : sequence of pydicom.Dataset, str or os.PathLike
        The slide's pyramid, largest level first, all of one series (and one PyramidUID, when
        they have one; each SEG level matches and references the source level of the same
        size), or a single source image, alone or in a sequence (then ``downsample_factors``
        are needed and each level's pixel spacing is scaled, as highdicom does).
    segment_descriptions : sequence of highdicom.seg.SegmentDescription
    folder : str or os.PathLike
        The folder for ``level-0.dcm``, ``level-1.dcm``, ...; made if missing (in an existing
        folder), and removed again if the write fails.
    downsample_factors : sequence of float, optional
        With a single source: finite factors > 1, ascending; level k is ``int(size / factor)``
        pixels.
    series_instance_uid, pyramid_uid, pyramid_label
        Shared by all levels; new UIDs by default.
    segmentation_type : str or highdicom.seg.SegmentationTypeValues
        As :func:`write_segmentation`.
    sop_instance_uids : sequence of str, optional
        One per level, full resolution first (as highdicom's); new UIDs by default.
    **options
        Further :func:`write_segmentation` options (transfer syntax, tile size, client...).

    Returns
    -------
    list of pathlib.Path
        The files written, full resolution first; instance numbers 1, 2, ...

    Raises
    ------
    SegmentationInputError, SegmentationTypeError
        As :func:`write_segmentation`, and for factors or source levels that make no pyramid,
        or a level's path that is a folder, before anything is written.
    DestinationExistsError
        If a level's file (or a symbolic link, even a dangling one) exists and ``overwrite``
        is not given, before anything is written. With ``overwrite``, the new levels replace
        the old ones only once all are written, all together: a rename that fails midway puts
        the old levels back. Old levels beyond the new last one are removed.
    ClusterError
        If the cluster loses the work; the levels this call had written are removed, so a
        failure never leaves part of a pyramid.
    """
    for key in ("instance_number", "sop_instance_uid", "plane_positions", "pixel_measures",
                "plane_orientation"):
        if key in options:
            raise SegmentationInputError(
                f"{key} is set per level; it cannot be given here"
                + (" (sop_instance_uids takes one per level)." if key == "sop_instance_uid"
                   else ".")
            )
    if isinstance(source_images, Dataset | str | os.PathLike | bytes | bytearray):
        # One slide, as write_segmentation takes it (bytes are refused by load_source_image,
        # not taken for a sequence of numbers).
        source_images = [source_images]
    folder = pathlib.Path(folder)
    if not folder.is_dir() and (folder.exists() or not folder.parent.is_dir()):
        raise SegmentationInputError(
            f"{folder} is not a folder, nor can it be made one (its parent must exist)."
        )
    folders = [str(s) for s in source_images if isinstance(s, str | os.PathLike) and os.path.isdir(s)]
    if folders:
        raise SegmentationInputError(
            f"The source {folders[0]} is a folder (a series, such as CT or MR, or a multi-frame "
            "image); a pyramid is made of tiled (whole-slide) images: give the slide's file, or "
            "its levels' files."
        )
    sources = [load_source_image(s) for s in source_images]
    if not sources:
        raise SegmentationInputError("source_images is empty; give the slide or its pyramid.")
    expected = (int(sources[0].TotalPixelMatrixRows), int(sources[0].TotalPixelMatrixColumns))
    array = drop_leading_axis(as_dask_array(mask), len(segment_descriptions), expected)
    rows, columns = (int(v) for v in array.shape[:2])
    if len(sources) == 1:
        shapes = [(rows, columns)] + [
            (int(rows / f), int(columns / f)) for f in _checked_factors(downsample_factors)
        ]
    else:
        if downsample_factors is not None:
            raise SegmentationInputError(
                "downsample_factors follow from a source pyramid; do not give both."
            )
        shapes = [
            (int(s.TotalPixelMatrixRows), int(s.TotalPixelMatrixColumns)) for s in sources
        ]
        if any(a[0] <= b[0] or a[1] <= b[1] for a, b in zip(shapes, shapes[1:])):
            raise SegmentationInputError(
                "The source images must be a pyramid ordered from the largest level down."
            )
    if min(min(shape) for shape in shapes) < 1:
        raise SegmentationInputError(f"A level would be empty: sizes {shapes}.")
    _check_one_pyramid(sources)
    if sop_instance_uids is not None:
        if isinstance(sop_instance_uids, str) or len(sop_instance_uids) != len(shapes):
            raise SegmentationInputError(
                f"sop_instance_uids takes one UID per level, {len(shapes)} here, not "
                f"{sop_instance_uids!r}."
            )
    # Every level's UIDs now, not as each level is written (a bad one was found after the
    # levels before it).
    check_uids(series_instance_uid=series_instance_uid, pyramid_uid=pyramid_uid,
               **{f"sop_instance_uids[{level}]": uid
                  for level, uid in enumerate(sop_instance_uids or ())})
    if "series_number" in options:
        check_numbers(series_number=options["series_number"])

    floating = array.dtype.kind == "f"
    fractional = parse_segmentation_type(segmentation_type) == "FRACTIONAL"
    method = "bilinear" if floating and fractional else "nearest"
    now = datetime.datetime.now()
    shared: dict[str, Any] = dict(
        series_instance_uid=series_instance_uid or hd.UID(),
        pyramid_uid=pyramid_uid or hd.UID(),
        pyramid_label=pyramid_label,
        segmentation_type=segmentation_type,
        # As highdicom's create_segmentation_pyramid: the content's date and time when given
        # (a series date after the content date is refused), else now.
        series_date=options.pop("series_date", None) or options.get("content_date") or now.date(),
        series_time=options.pop("series_time", None) or options.get("content_time") or now.time(),
    )
    paths = [folder / f"level-{level}.dcm" for level in range(len(shapes))]
    overwrite = bool(options.get("overwrite", False))
    _check_levels(paths, _stale_levels(folder, len(paths)) if overwrite else [], overwrite)
    # Each level is written under a hidden name and renamed into place once every level is
    # written: a failure leaves the old pyramid (if any) as it was, not part of each.
    token = uuid.uuid4().hex[:8]
    pending = [folder / f".{path.name}.{token}.new" for path in paths]
    made = not folder.exists()
    # A mask in memory goes to write_segmentation as it is, which sends each block with its
    # task; its levels are resampled here, by Dask's threads. In a Dask array it would travel
    # whole inside each level's graph.
    in_memory = isinstance(mask, np.ndarray)
    try:
        folder.mkdir(exist_ok=True)
        for level, shape in enumerate(shapes):
            source = sources[level] if len(sources) > 1 else sources[0]
            level_options = dict(options)
            if sop_instance_uids is not None:
                level_options["sop_instance_uid"] = sop_instance_uids[level]
            level_mask: Any
            if level == 0:
                level_mask = mask if in_memory else array
            else:
                tile = tile_size(options.get("tile_size"), source)
                chunks = (
                    aligned_chunks(shape[0], tile[0], 2048),
                    aligned_chunks(shape[1], tile[1], 2048),
                )
                if in_memory:
                    level_mask = downsample(
                        array.rechunk((2048, 2048, *array.shape[2:])), shape, method, chunks
                    ).compute(scheduler="threads")
                else:
                    level_mask = downsample(array, shape, method, chunks)
                if len(sources) == 1:
                    # As highdicom: the spacing grows by the ratio of the sizes, per axis.
                    measures = source.SharedFunctionalGroupsSequence[0].PixelMeasuresSequence[0]
                    spacing = measures.PixelSpacing
                    level_options["pixel_measures"] = hd.PixelMeasuresSequence(
                        pixel_spacing=(
                            spacing[0] * (rows / shape[0]), spacing[1] * (columns / shape[1])
                        ),
                        slice_thickness=measures.SliceThickness,
                    )
            try:
                write_segmentation(
                    level_mask, source, segment_descriptions, pending[level],
                    instance_number=level + 1, **shared, **{**level_options, "overwrite": True},
                )
            except OSError as error:
                # A full disk's message names the SEG written: the level, not its hidden name.
                if error.strerror and pending[level].name in error.strerror:
                    raise OSError(error.errno, error.strerror.replace(
                        f"the SEG {pending[level].name}", f"the pyramid's {paths[level].name}"),
                        error.filename) from error
                raise
        _put_levels_in_place(pending, paths, overwrite)
    except BaseException:
        # Half a pyramid is no pyramid: remove the levels this call wrote, under names of its
        # own (those not written yet are missing).
        for path in pending:
            path.unlink(missing_ok=True)
        if made:
            with contextlib.suppress(OSError):
                folder.rmdir()
        raise
    return paths


def _check_one_pyramid(sources: list[Dataset]) -> None:
    """Refuse source levels of more than one series or pyramid, as highdicom does (which also
    needs a PyramidUID on each: here levels without one, of older slides, are taken)."""
    if len(sources) < 2:
        return
    series = {str(s.get("SeriesInstanceUID")) for s in sources}
    if len(series) > 1:
        raise SegmentationInputError(
            f"The source levels belong to {len(series)} series; a pyramid's levels are of one "
            "slide, one series (give that slide's levels, largest first)."
        )
    pyramids = {str(s.PyramidUID) if "PyramidUID" in s else None for s in sources}
    if len(pyramids) > 1:
        raise SegmentationInputError(
            "The source levels do not share one PyramidUID; give the levels of one pyramid."
        )


def _checked_factors(factors: Any) -> list[float]:
    """``downsample_factors`` of a single source as floats: finite, above 1, ascending."""
    if factors is None or (isinstance(factors, Sequence | np.ndarray) and len(factors) == 0):
        raise SegmentationInputError(
            "With a single source image, give downsample_factors (e.g. [2, 4, 8])."
        )
    # A string is a sequence too, of characters: "2,4" would be refused as a factor ",".
    if (isinstance(factors, str | bytes) or not isinstance(factors, Sequence | np.ndarray)
            or not all(isinstance(f, numbers.Real) and not isinstance(f, bool | np.bool_)
                       for f in factors)):
        raise SegmentationTypeError(
            f"downsample_factors must be a sequence of numbers, like [2, 4, 8], not {factors!r}."
        )
    values = [float(f) for f in factors]
    if not all(math.isfinite(v) and v > 1 for v in values) or values != sorted(values):
        raise SegmentationInputError(
            f"downsample_factors must be finite, ascending and above 1, got {values}."
        )
    return values


def _stale_levels(folder: pathlib.Path, first: int) -> list[pathlib.Path]:
    """The level files of an earlier, deeper pyramid from level ``first`` on."""
    stale: list[pathlib.Path] = []
    # lexists: a dangling symbolic link is a level file too.
    while os.path.lexists(path := folder / f"level-{first + len(stale)}.dcm"):
        stale.append(path)
    return stale


def _check_levels(paths: list[pathlib.Path], stale: list[pathlib.Path], overwrite: bool) -> None:
    """Refuse level paths that cannot be replaced: folders, or any level file without overwrite."""
    folders = [str(path) for path in [*paths, *stale] if path.is_dir()]
    if folders:
        raise SegmentationInputError(
            f"{', '.join(folders)} {'is a folder' if len(folders) == 1 else 'are folders'}, "
            f"where the pyramid's level files go; move {'it' if len(folders) == 1 else 'them'} "
            "away or choose another folder."
        )
    for path in [*paths, *stale]:
        # Renamed aside, then removed: a FIFO or device there was lost to a file.
        if (special := not_a_regular_file(path)) is not None:
            raise special
    existing = [str(path) for path in paths if os.path.lexists(path)]
    if existing and not overwrite:
        raise DestinationExistsError(
            f"{', '.join(existing)} {'exists' if len(existing) == 1 else 'exist'}; "
            "pass overwrite=True to replace the levels."
        )


def _identity(status: os.stat_result) -> tuple[int, int]:
    """A file's device and inode: which file a path names (an inode of 0: not known)."""
    return status.st_dev, status.st_ino


def _put_levels_in_place(written: list[pathlib.Path], paths: list[pathlib.Path],
                         overwrite: bool) -> None:
    """Rename each written level onto its path: all of them, or none.

    The old levels (and, when overwriting, those of an earlier, deeper pyramid, which would be
    another series beside the new one) are first renamed aside under hidden names, restored if
    a rename fails midway, and removed once every new level is in place.
    """
    folder = paths[0].parent
    stale = _stale_levels(folder, len(paths)) if overwrite else []
    # Again, just before renaming: the folder may have changed while the levels were written.
    _check_levels(paths, stale, overwrite)
    token = uuid.uuid4().hex[:8]
    aside: dict[pathlib.Path, pathlib.Path] = {}
    placed: list[tuple[pathlib.Path, tuple[int, int]]] = []  # each new level's path and file
    try:
        # Each rename is listed before it is made: a signal's exception (Ctrl-C, SIGTERM in the
        # CLI) can come as it returns. Undoing one that was not made fails harmlessly.
        for path in [*paths, *stale]:
            if os.path.lexists(path):
                backup = folder / f".{path.name}.{token}.old"
                aside[path] = backup
                os.rename(path, backup)
        for new, path in zip(written, paths):
            placed.append((path, _identity(os.stat(new))))
            replace_atomically(new, path, overwrite)
    except BaseException:
        for path, identity in placed:
            # Only the new level: a file that appeared there meanwhile is someone else's.
            with contextlib.suppress(OSError):
                if identity[1] and _identity(os.lstat(path)) == identity:
                    path.unlink()
        for path, backup in aside.items():
            # One that cannot go back stays under its hidden name: kept, not destroyed.
            with contextlib.suppress(OSError):
                os.rename(backup, path)
        raise
    for backup in aside.values():
        backup.unlink(missing_ok=True)
