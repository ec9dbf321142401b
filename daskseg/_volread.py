"""Reading SEGs of series and multi-frame images: a lazy ``(planes, rows, columns[, segments])``.

The volume frame index (``_volframes``) says which source plane and segment each frame holds;
the planes are then read as the tiled reader reads a column of tiles: a chunk of ``k`` planes
is a ``k * rows`` by ``columns`` image of one tile per plane, decoded by ``_decode.read_chunk``
with the same options (``read.ReadOptions``), so the values are those of highdicom's
``get_pixels_by_source_instance``.
"""

from __future__ import annotations

import functools
import numbers
import os
import pathlib
import warnings
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any, NoReturn

import dask
import dask.array as da
import numpy as np
import pydicom
from dask.highlevelgraph import HighLevelGraph
from numpy.typing import DTypeLike

from daskseg._decode import FrameRef, read_planes
from daskseg._frames import (
    HEADER_DAMAGE,
    FileIdentity,
    FileSource,
    FrameLayout,
    FrameRanges,
    FrameSource,
    check_segmentation,
    damaged_header,
    describe_segments,
    file_identity,
    locate_frames,
    not_a_transfer_syntax,
    open_file,
    segment_items,
)
from daskseg._malloc import register_on_current_client
from daskseg._volframes import (
    FrameItem,
    at_frame_items,
    index_volume_frames,
    multiframe_sources,
    plane_order,
    read_frame_items,
    scan_frame_items,
    sortable,
)
from daskseg.errors import SegmentationFileError, SegmentationInputError
from daskseg.read import ReadOptions, _into_memory, decoded_into_zarr

if TYPE_CHECKING:
    from daskseg._web import WebHead

__all__ = ["VolumeSegmentationReader", "read_volume_head"]

#: A volume SEG's header, the layout of its frames, their byte ranges (encapsulated), the
#: raw bytes of its per-frame functional groups, and the file's identity.
Head = tuple[pydicom.Dataset, FrameLayout, "list[FrameRanges] | None", bytes,
             "FileIdentity | None"]


def read_volume_head(path: str) -> Head | None:
    """The head of a SEG of a series or multi-frame image; None for any other file.

    pydicom reads the header up to the per-frame items only (it would make thousands of
    Datasets of them); their raw bytes are kept for the frame index.
    """
    try:
        handle = open_file(path)
    except FileNotFoundError as error:
        raise SegmentationFileError(f"{path} does not exist.") from error
    with handle:
        try:
            header = pydicom.filereader.read_partial(handle, stop_when=at_frame_items)
        except Exception:  # the tiled reader reports what is wrong with the file
            return None
        syntax = header.file_meta.get("TransferSyntaxUID")
        if syntax is not None and not syntax.is_transfer_syntax:
            raise not_a_transfer_syntax(path, syntax)
        if ("SegmentSequence" not in header or "TotalPixelMatrixRows" in header
                or syntax is None or not syntax.is_little_endian or syntax.is_deflated):
            return None
        try:
            raw = read_frame_items(handle, header, syntax.is_implicit_VR)
            pixel_element = handle.tell()
            layout, ranges = locate_frames(handle, header, pixel_element, name=path, tiled=False)
        except SegmentationFileError as error:
            _raise_named(path, error)
        except HEADER_DAMAGE as error:
            raise damaged_header(path, error) from error
        identity = file_identity(handle)
    return header, layout, ranges, raw, identity


def _raise_named(path: str, error: SegmentationInputError) -> NoReturn:
    """Raise ``error`` as a SegmentationFileError whose message names the file."""
    message = str(error)
    if isinstance(error, SegmentationFileError) and message.startswith(path):
        raise error
    raise SegmentationFileError(
        message if message.startswith(path) else f"{path}: {message}"
    ) from error


# When ``chunks`` is not given: at most this many bytes of output per chunk, and at least
# _MIN_CHUNKS chunks, so that every worker of a small cluster stays busy to the end.
_CHUNK_BYTES = 32 * 2**20
_MIN_CHUNKS = 16


class VolumeSegmentationReader:
    """A DICOM Segmentation of a series or multi-frame image, opened for lazy reading.

    Attributes
    ----------
    segmentation_type : str
    segment_numbers : list of int
    segment_descriptions : list of highdicom.seg.SegmentDescription
    frame_size : tuple of int
        Rows and columns of a plane.
    number_of_frames : int
    source_sop_instance_uids : list of str
        The source images with frames, in the default order (sorted along the slice normal);
        "" for a plane whose frames reference no source image. For a SEG of one multi-frame
        image, that image's UID for every plane.
    source_frame_numbers : list of int or None
        For a SEG of one multi-frame image (Enhanced CT, MR...): the frames of it (1-based) with
        SEG frames, in the default order; None for a SEG of single-frame images.
    transfer_syntax_uid : pydicom.uid.UID
    plane_orientation : tuple of float or None
        The planes' ImageOrientationPatient: shared, or each frame's own when all agree; None
        when the frames have no one orientation.
    """

    def __init__(self, path: str, head: Head | None = None) -> None:
        head = head or read_volume_head(path)
        if head is None:
            raise SegmentationFileError(
                f"{path} is not a DICOM Segmentation of a series or multi-frame image."
            )
        header, layout, ranges, raw, identity = head
        self._init(path, header, layout, FileSource.of(path, identity), ranges,
                   lambda implicit: scan_frame_items(raw, 0, implicit))

    @classmethod
    def from_web(cls, head: WebHead) -> VolumeSegmentationReader:
        """The reader of a SEG on a DICOMweb server, from what ``_web.open_web`` fetched."""
        assert head.frame_items is not None
        items = head.frame_items
        reader = cls.__new__(cls)
        reader._init(head.source.path, head.header, head.layout, head.source, None,
                     lambda implicit: items)
        return reader

    def _init(self, path: str, header: pydicom.Dataset, layout: FrameLayout,
              source: FrameSource, ranges: list[FrameRanges] | None,
              frame_items: Callable[[bool], list[FrameItem]]) -> None:
        self.path = path
        self.header = header
        self._layout = layout
        self._source = source
        self._frame_ranges = ranges
        try:
            self._describe(header, frame_items)
        except SegmentationInputError as error:  # what the frame index found wrong in the file
            _raise_named(path, error)
        except HEADER_DAMAGE as error:
            raise damaged_header(path, error) from error

    def _describe(self, header: pydicom.Dataset,
                  frame_items: Callable[[bool], list[FrameItem]]) -> None:
        path = self.path
        self.segment_numbers = [int(item.SegmentNumber) for item in segment_items(header)]
        self.segmentation_type = check_segmentation(header, self.segment_numbers,
                                                    self._layout.bits_allocated, path)
        self.frame_size = (int(header.Rows), int(header.Columns))
        self.number_of_frames = int(header.get("NumberOfFrames", 1))
        self.transfer_syntax_uid = header.file_meta.TransferSyntaxUID
        if self.transfer_syntax_uid.is_deflated or not self.transfer_syntax_uid.is_little_endian:
            raise SegmentationInputError(
                f"Transfer syntax {self.transfer_syntax_uid.name} is not supported for SEGs of "
                "series; use highdicom."
            )
        items = frame_items(self.transfer_syntax_uid.is_implicit_VR)
        if len(items) != self.number_of_frames:
            raise SegmentationFileError(
                f"{path}: the SEG has {self.number_of_frames} frames but {len(items)} per-frame "
                "functional group items: the SEG is inconsistent (or its server left them out)."
            )
        self._index = index_volume_frames(header, items, self.segment_numbers)
        self.plane_orientation = self._index.orientation
        if len(self._index.keys) > 1 and not sortable(self._index):
            choose = ("source_frame_numbers" if multiframe_sources(self._index)
                      else "source_sop_instance_uids")
            warnings.warn(
                f"{path}: " + ("some frames have no plane position" if self.plane_orientation
                               is not None else "its frames have no one plane orientation")
                + ", so its planes cannot be sorted along the slice normal: they are read in "
                f"the order of their first frames in the file; give {choose} for another.",
                UserWarning, stacklevel=4,
            )
        default = plane_order(header, self._index, None)
        self.source_sop_instance_uids = [self._index.keys[p][0] for p in default]
        self.source_frame_numbers: list[int] | None = None
        if len(multiframe_sources(self._index)) == 1:
            self.source_frame_numbers = [self._index.keys[p][1] for p in default]

    @functools.cached_property
    def segment_descriptions(self) -> list[Any]:
        """The segments' descriptions (highdicom's), by number; made when first asked for, as
        :attr:`daskseg.SegmentationReader.segment_descriptions`."""
        return describe_segments(self.header, self.path)

    def to_dask(
        self,
        *,
        source_sop_instance_uids: Sequence[str] | None = None,
        source_frame_numbers: Sequence[int] | None = None,
        segment_numbers: Sequence[int] | None = None,
        combine_segments: bool = False,
        relabel: bool = False,
        rescale_fractional: bool = True,
        dtype: DTypeLike | None = None,
        chunks: int | None = None,
    ) -> da.Array:
        """The planes as a lazy Dask array; see :func:`daskseg.read_segmentation`.

        ``chunks`` is the number of planes per chunk (by default at most 32 MiB of output, and
        at least 16 chunks).
        """
        if chunks is not None and (isinstance(chunks, bool)
                                   or not isinstance(chunks, numbers.Integral) or chunks < 1):
            raise SegmentationInputError(
                f"chunks of a volume SEG is a number of planes per chunk (1 or more), not "
                f"{chunks!r}."
            )
        register_on_current_client()
        options = ReadOptions(segment_numbers, combine_segments, relabel, rescale_fractional,
                              dtype, None)
        output = options.output(self)  # type: ignore[arg-type]
        planes = plane_order(self.header, self._index, source_sop_instance_uids,
                             source_frame_numbers)
        if not planes:
            raise SegmentationInputError(
                "source_frame_numbers is empty." if source_frame_numbers is not None
                else "source_sop_instance_uids is empty."
            )
        labelmap = self.segmentation_type == "LABELMAP"
        channels = [0] if labelmap else [self.segment_numbers.index(n) for n in output.numbers]
        rows, columns = self.frame_size
        plane_bytes = rows * columns * np.dtype(output.dtype).itemsize * (
            1 if combine_segments else len(output.numbers))
        per_chunk = int(chunks) if chunks is not None else self._planes_per_chunk(
            planes, channels, plane_bytes)
        starts = range(0, len(planes), per_chunk)
        plane_chunks = tuple(min(per_chunk, len(planes) - s) for s in starts)
        out_chunks: tuple[tuple[int, ...], ...] = (plane_chunks, (rows,), (columns,))
        if not combine_segments:
            out_chunks += ((len(output.numbers),),)
        token = dask.base.tokenize(
            self.path, os.path.getmtime(self.path) if os.path.exists(self.path) else 0,
            output, out_chunks, planes,
        )
        name = f"decode-volume-seg-{token}"
        source = self._source
        graph: dict[tuple[Any, ...], Any] = {}
        for i, start in enumerate(starts):
            chunk = planes[start : start + plane_chunks[i]]
            frames: list[list[FrameRef | None]] = []
            for channel in channels:
                row = []
                for plane in chunk:
                    index = -1 if plane < 0 else int(self._index.table[channel, plane])
                    row.append(None if index < 0 else (index, self._ranges(index)))
                frames.append(row)
            key = (name, i, 0, 0) + (() if combine_segments else (0,))
            graph[key] = (read_planes, source, self._layout, frames, len(chunk), output)
        meta = np.empty((0,) * len(out_chunks), dtype=np.dtype(output.dtype))
        return da.Array(HighLevelGraph.from_collections(name, graph, dependencies=[]), name,
                        out_chunks, meta=meta)

    def _planes_per_chunk(self, planes: list[int], channels: list[int], plane_bytes: int) -> int:
        """The default: at most _CHUNK_BYTES of output, and at least _MIN_CHUNKS chunks; from a
        server, a chunk's frames fill one request (a server may parse the whole instance for
        every request: Orthanc takes 0.5 s a request for a 120 MB SEG)."""
        by_bytes = max(1, _CHUNK_BYTES // plane_bytes)
        spread = -(-len(planes) // _MIN_CHUNKS)
        if isinstance(self._source, FileSource):
            return max(1, min(by_bytes, spread))
        known = [plane for plane in planes if plane >= 0]
        frames = int((self._index.table[channels][:, known] >= 0).sum()) if known else 0
        per_request = getattr(self._source, "frames_per_request", 1)
        filling = per_request * len(planes) // max(frames, 1)
        return max(1, min(by_bytes, max(spread, filling)))

    def to_numpy(
        self,
        *,
        source_sop_instance_uids: Sequence[str] | None = None,
        source_frame_numbers: Sequence[int] | None = None,
        segment_numbers: Sequence[int] | None = None,
        combine_segments: bool = False,
        relabel: bool = False,
        rescale_fractional: bool = True,
        dtype: DTypeLike | None = None,
        chunks: int | None = None,
        progress: bool = False,
        client: Any = None,
    ) -> np.ndarray:
        """Decode the planes into memory, in parallel: highdicom's
        ``get_pixels_by_source_instance`` (or ``get_pixels_by_source_frame``).

        Arguments as :meth:`to_dask`, and ``progress`` and ``client`` as
        :meth:`daskseg.SegmentationReader.to_numpy`; faster than ``to_dask(...).compute()``.
        """
        array = self.to_dask(
            source_sop_instance_uids=source_sop_instance_uids,
            source_frame_numbers=source_frame_numbers, segment_numbers=segment_numbers,
            combine_segments=combine_segments, relabel=relabel,
            rescale_fractional=rescale_fractional, dtype=dtype, chunks=chunks,
        )
        return _into_memory(array, client, progress, "decode planes of the SEG")

    def to_zarr(
        self,
        store: Any,
        *,
        source_sop_instance_uids: Sequence[str] | None = None,
        source_frame_numbers: Sequence[int] | None = None,
        segment_numbers: Sequence[int] | None = None,
        combine_segments: bool = False,
        relabel: bool = False,
        rescale_fractional: bool = True,
        dtype: DTypeLike | None = None,
        chunks: int | None = None,
        overwrite: bool = False,
        progress: bool = False,
        client: Any = None,
    ) -> Any:
        """Decode the planes into a Zarr array, block by block with bounded memory: the way
        for a volume larger than memory (``to_numpy`` and ``to_nifti`` hold it whole).

        Arguments as :meth:`to_dask` (the planes in that order, the Zarr array's chunks the
        Dask array's), and ``overwrite``, ``progress`` and ``client`` as
        :meth:`daskseg.SegmentationReader.to_zarr`. The array holds no geometry: its planes'
        positions are :meth:`plane_positions` (for the default order).

        Returns
        -------
        zarr.Array
        """
        array = self.to_dask(
            source_sop_instance_uids=source_sop_instance_uids,
            source_frame_numbers=source_frame_numbers, segment_numbers=segment_numbers,
            combine_segments=combine_segments, relabel=relabel,
            rescale_fractional=rescale_fractional, dtype=dtype, chunks=chunks,
        )
        return decoded_into_zarr(array, store, overwrite=overwrite, progress=progress,
                                 client=client)

    def to_nifti(
        self,
        path: str | os.PathLike,
        *,
        source_images: Any = None,
        combine_segments: bool | None = None,
        client: Any = None,
    ) -> pathlib.Path:
        """Write the planes as a NIfTI file in the series' geometry (RAS+ affine), as
        ``daskseg decode seg.dcm -o labels.nii.gz`` does.

        Parameters
        ----------
        path : str or os.PathLike
            The ``.nii`` or ``.nii.gz`` file to write (replaced if it exists).
        source_images : folder, paths or pydicom Datasets, optional
            The series the SEG is of (as :func:`daskseg.write_segmentation` takes it): one slice
            for each of its images, those without frames zeros. Without it, the slices span
            the planes with frames.
        combine_segments : bool, optional
            Labels on three axes (the default for BINARY and LABELMAP), or False for each
            segment on a fourth axis (the default for FRACTIONAL, whose fractions are kept).
        client : distributed.Client, optional
            The cluster that decodes the frames (as :meth:`to_numpy`).

        Returns
        -------
        pathlib.Path
            The file written.

        Raises
        ------
        MissingDependencyError
            If nibabel is not installed (``pip install 'daskseg[nifti]'``).
        SegmentationInputError
            If the planes are not a regular grid of slices, or ``source_images`` is another
            series.
        """
        from daskseg._nifti import volume_to_nifti

        return volume_to_nifti(self, path, client=client, source_images=source_images,
                               combine_segments=combine_segments)

    def plane_positions(self) -> np.ndarray:
        """ImagePositionPatient ``(planes, 3)`` of the planes in the default order."""
        order = plane_order(self.header, self._index, None)
        return self._index.positions[order]

    def _ranges(self, index: int) -> FrameRanges:
        if not isinstance(self._source, FileSource):
            return []  # the source asks for frames by number
        if self._frame_ranges is None:
            return self._layout.ranges(index)
        return self._frame_ranges[index]
