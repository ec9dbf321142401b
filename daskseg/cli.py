"""The ``daskseg`` command: encode, decode, info and demo.

daskseg's own errors (a user's mistake it found) and the OS's errors about the user's files
print one line, ``daskseg: error: ...``, and exit with status 1 (2 for usage errors, as
argparse does), as do errors in reading the mask on the workers (a damaged Zarr chunk, a
truncated file), naming it. Anything else is a bug in daskseg and shows its traceback.
Ctrl-C, SIGTERM and SIGHUP stop a command with its partial files removed, with the shell's
status for the signal (130, 143, 129).
"""

from __future__ import annotations

import _thread
import argparse
import atexit
import contextlib
import logging
import math
import os
import pathlib
import re
import signal
import sys
import tempfile
import threading
import time
import traceback
from collections.abc import Iterator, Sequence
from typing import Any

__all__ = ["main", "segment_descriptions_from_dcmqi"]

from daskseg._client import cluster_client
from daskseg._codecs import CODECS
from daskseg.errors import DaskSegError, SegmentationInputError
from daskseg._dcmqi import (
    renumber_as_dcmqi,
    segment_descriptions_from_dcmqi,
    segment_descriptions_from_labels,
)

#: The short names of ``--transfer-syntax``, from the codec table.
TRANSFER_SYNTAXES = {name: str(uid) for uid, codec in CODECS.items() for name in codec.names}

class UserError(Exception):
    """A mistake in the command line or its files: reported in one line."""


def _open_mask(path: str) -> Any:
    """A mask from a Zarr store (path or URL), a .npy, TIFF, NIfTI or NRRD file, without reading it."""
    lower = path.lower().rstrip("/")
    if lower.endswith(".npy"):
        import numpy as np

        try:
            return np.load(path, mmap_mode="r")
        except FileNotFoundError:
            raise UserError(f"mask {path} does not exist") from None
        except ValueError as error:  # numpy's verdict on the file's header
            # numpy's fallback for a file that is no .npy speaks of pickles and allow_pickle=.
            reason = "" if "pickle" in str(error) else f": {error}"
            raise UserError(f"mask {path} is not a NumPy .npy file{reason}") from None
    if lower.endswith((".tif", ".tiff")):
        return _tiff_mask(path)
    if "://" not in path and not os.path.exists(path):
        raise UserError(f"mask {path} does not exist")
    return path  # a Zarr store, a NIfTI or NRRD file: write_segmentation opens it


class _TiffRegions:
    """A TIFF's first image (its full resolution) as an array read region by region.

    Each region opens the file where it is read, on a worker: an open TIFF (tifffile's Zarr
    store holds the file and a lock) cannot be sent to another process.
    """

    def __init__(self, path: str, shape: tuple[int, ...], dtype: Any) -> None:
        self.path, self.shape, self.dtype = path, shape, dtype
        self.ndim = len(shape)

    def __getitem__(self, key: Any) -> Any:
        import tifffile
        import zarr

        with tifffile.imread(self.path, aszarr=True, level=0) as store:
            return zarr.open_array(store, mode="r")[key]


# Regions of a TIFF mask: whole tiles (or strips) of the file, about this many pixels a side.
_TIFF_REGION = 4096


def _tiff_mask(path: str) -> Any:
    try:
        import tifffile
        import zarr
    except ImportError:
        raise UserError(
            "reading a TIFF mask needs tifffile: pip install 'daskseg[tiff]'"
        ) from None
    import dask.array as da

    try:
        with tifffile.imread(path, aszarr=True, level=0) as store:
            array = zarr.open_array(store, mode="r")
            shape, dtype, stored = tuple(array.shape), array.dtype, tuple(array.chunks)
    except FileNotFoundError:
        raise UserError(f"mask {path} does not exist") from None
    except tifffile.TiffFileError as error:
        raise UserError(f"mask {path} is not a TIFF file: {error}") from None
    # Rows and columns in whole tiles or strips of the file; samples (if any) whole.
    chunks = tuple(max(1, _TIFF_REGION // size) * size for size in stored[:2]) + shape[2:]
    return da.from_array(_TiffRegions(os.path.abspath(path), shape, dtype), chunks=chunks,
                         asarray=False, fancy=False, lock=False)


def _client(args: argparse.Namespace) -> contextlib.AbstractContextManager[Any]:
    """The command's cluster: ``--scheduler``'s, else a LocalCluster of its own."""
    # A user's mistake found in a block task is reported as one line by main(); the workers'
    # own log of the failed task (with its traceback) would only repeat it.
    options: dict[str, Any] = {"silence_logs": logging.CRITICAL}
    if args.scheduler:
        from distributed.comm import parse_address, parse_host_port
        from distributed.comm.registry import backends

        try:
            scheme, location = parse_address(args.scheduler)
            if scheme == "inproc":
                raise ValueError("an inproc:// address is of a cluster inside one process")
            if scheme not in backends:
                raise ValueError(f"unknown address scheme {scheme!r} (tcp, tls, ...)")
            if scheme in ("tcp", "tls"):
                parse_host_port(location)
        except ValueError as error:
            raise UserError(f"--scheduler {args.scheduler!r} is not a scheduler's address "
                            f"(tcp://host:8786): {error}") from None
    if args.threads:
        options.update(processes=False, threads_per_worker=args.threads)
    return _connected(cluster_client(address=args.scheduler, use_current=False,
                                     n_workers=args.workers, **options), args.scheduler)


@contextlib.contextmanager
def _connected(clients: contextlib.AbstractContextManager[Any], address: str | None) -> Any:
    """``clients`` entered; distributed's refusal of ``--scheduler``'s address (TLS without
    its certificates, say) as one line. Signals noted while the cluster closes after the
    outputs were put in place (:func:`_outputs_in_place`) are kept for
    :func:`_signal_after_outputs`."""
    try:
        with contextlib.ExitStack() as stack:
            try:
                client = stack.enter_context(clients)
            except (TypeError, ValueError) as error:
                if address is None:
                    raise
                raise UserError(f"--scheduler {address!r}: cannot connect ({error}); for "
                                "tls:// give the certificates in Dask's configuration "
                                "(distributed.comm.tls)") from None
            yield client
    finally:
        for number, handler in _replaced_handlers.items():
            signal.signal(number, signal.SIG_DFL if handler is None else handler)
        _replaced_handlers.clear()


# The signals that stop a command: Ctrl-C, SIGTERM and SIGHUP, where the platform has them.
_STOP_SIGNALS = tuple(getattr(signal, name) for name in ("SIGINT", "SIGTERM", "SIGHUP")
                      if hasattr(signal, name))
_replaced_handlers: dict[int, Any] = {}
_noted_signals: list[int] = []


def _outputs_in_place() -> None:
    """The command's outputs are complete: until its cluster is closed, SIGINT, SIGTERM and
    SIGHUP are noted, not raised. Raised while the cluster closed, the interrupt reported a
    complete file as 'interrupted' (exit 130), and distributed's half-closed cluster held the
    exit for 10-60 s."""
    if threading.current_thread() is not threading.main_thread() or _replaced_handlers:
        return
    for number in _STOP_SIGNALS:
        _replaced_handlers[number] = signal.signal(
            number, lambda signal_number, frame: _noted_signals.append(signal_number))


def _signal_after_outputs(more_to_do: bool) -> None:
    """Act on a signal noted since :func:`_outputs_in_place`: raise it where the command has
    more to do (storing with STOW-RS), else say that the outputs are kept."""
    if not _noted_signals:
        return
    number = _noted_signals[0]
    _noted_signals.clear()
    if more_to_do:
        raise KeyboardInterrupt() if number == signal.SIGINT else _Stopped(number)
    print("daskseg: the signal to stop came once the output was complete: it is kept",
          file=sys.stderr)


def _factors(text: str | None, mask: Any, source: Any, tile_size: Any) -> list[float]:
    """``--downsample-factors``, or powers of two until a level fits in one tile."""
    if text:
        try:
            factors = [float(v) for v in text.split(",")]
        except ValueError:
            factors = []
        # float() takes "nan" and "inf" too, which make no level.
        if not factors or not all(math.isfinite(f) for f in factors):
            raise UserError(f"--downsample-factors takes numbers like 2,4,8, not {text!r}")
        return factors
    from daskseg._source import load_source_image

    header = load_source_image(source)
    sizes = (int(header.TotalPixelMatrixRows), int(header.TotalPixelMatrixColumns))
    tiles = tile_size or (int(header.Rows), int(header.Columns))
    # As the OME-Zarr export: halve until a level fits in one tile (while no side is empty).
    factors = [2.0]
    while (any(size / factors[-1] > tile for size, tile in zip(sizes, tiles))
           and min(sizes) / (2 * factors[-1]) >= 1):
        factors.append(2 * factors[-1])
    return factors


def _raised_reading_the_mask(error: BaseException) -> bool:
    """Whether ``error`` came from a worker's read of a region of the mask (its store, file or
    codec), rather than from daskseg's code."""
    calls = [(frame.f_globals.get("__name__", ""), frame.f_code.co_name)
             for frame, _ in traceback.walk_tb(error.__traceback__)]
    # distributed sends a task's error with the worker's frames, which follow the client's wait.
    waits = [index for index, (module, _) in enumerate(calls) if module == "distributed.client"]
    if not waits:
        return False
    worker = calls[waits[-1] + 1:]
    # Past the runners of a block's graph (dask's, and daskseg's _BlockGraph), the first call
    # is the task's own: a read of the mask is its array's __getitem__ (a Zarr array, nibabel's
    # proxy of a NIfTI file, _TiffRegions); daskseg's own functions are named otherwise.
    while worker and (worker[0][0].partition(".")[0] == "dask"
                      or worker[0] == ("daskseg._tasks", "__call__")):
        worker = worker[1:]
    return bool(worker) and worker[0][1] == "__getitem__"


@contextlib.contextmanager
def _naming_the_mask(mask: str) -> Iterator[None]:
    """Report an error in a read of the mask (a damaged Zarr chunk, a truncated file) as one
    line that names it; the libraries' messages do not say which file they were reading."""
    try:
        yield
    except DaskSegError:
        raise
    except Exception as error:
        if not _raised_reading_the_mask(error):
            raise
        raise UserError(f"could not read the mask {mask}: {type(error).__name__}: {error}") \
            from error


def _encode(args: argparse.Namespace) -> None:
    from daskseg import write_segmentation

    if args.metadata and args.label:
        raise UserError("give the segments with --metadata FILE or with --label NAME (not both)")
    if args.downsample_factors and not args.pyramid:
        raise UserError("--downsample-factors sets the levels of --pyramid; add --pyramid, or "
                        "leave them out")
    if not args.pyramid and os.path.isdir(args.output):  # --overwrite would not help
        raise UserError(f"The destination {args.output} is a folder; give a file name.")
    if not args.pyramid and os.path.exists(args.output) and not args.overwrite:
        raise UserError(f"{args.output} exists; pass --overwrite or choose another output")
    if args.pyramid and os.path.isdir(args.source):
        raise UserError(f"--pyramid makes levels of a tiled (whole-slide) image; {args.source} is "
                        "a folder, of a series (CT, MR...) or a multi-frame image: leave out "
                        "--pyramid")
    from daskseg.dicomweb import fetch_instance_metadata, is_dicomweb_url

    mask = _open_mask(args.mask)
    source: Any = args.source
    if is_dicomweb_url(source) and _dicomweb_headers():
        # The token goes with the source's request too: the library takes a URL's own
        # credentials only (or a Dataset fetched with headers, as here).
        source = fetch_instance_metadata(source, headers=_dicomweb_headers())
    if args.metadata:
        descriptions, options = segment_descriptions_from_dcmqi(args.metadata)
        label_ids = renumber_as_dcmqi(descriptions, args.type)
        if label_ids:  # segment k is the mask's value label_ids[k - 1]
            options["label_values"] = label_ids
    elif args.label:
        descriptions, options = segment_descriptions_from_labels(args.label, args.type), {}
    else:
        from daskseg.omezarr import _label_group, _ome_zarr_segments

        # An OME-Zarr label image may name its segments in its image-label metadata.
        if "://" in args.mask or _label_group(args.mask) is None:
            raise UserError("give the segments with --metadata FILE or with --label NAME "
                            "(an OME-Zarr label image may carry them in its image-label metadata)")
        # Label values that skip numbers: BINARY and FRACTIONAL segments 1..n, segment k the
        # k-th value, as for dcmqi's labelIDs.
        descriptions, label_values = _ome_zarr_segments(args.mask, args.type, renumber=True)
        options = {"label_values": label_values} if label_values else {}
    tile_size = None
    if args.tile_size:
        try:
            parts = [int(v) for v in args.tile_size.lower().split("x")]
        except ValueError:
            parts = []
        if len(parts) not in (1, 2):
            raise UserError(f"--tile-size takes N or RxC, not {args.tile_size!r}")
        tile_size = (parts[0], parts[-1])
    syntax = TRANSFER_SYNTAXES.get(args.transfer_syntax.lower(), args.transfer_syntax)
    from daskseg._inputs import is_uid_form

    if not is_uid_form(syntax):
        raise UserError(f"unknown transfer syntax {args.transfer_syntax!r}; use one of "
                        f"{', '.join(TRANSFER_SYNTAXES)}, or a UID")
    start = time.perf_counter()
    with _client(args) as client, _naming_the_mask(args.mask):
        common = dict(
            segmentation_type=args.type, transfer_syntax_uid=syntax, tile_size=tile_size,
            dimension_organization_type=args.organization, client=client,
            overwrite=args.overwrite, progress=not args.quiet, **options,
        )
        if args.pyramid:
            from daskseg import write_segmentation_pyramid

            # Each level is an instance of the pyramid's series, numbered by level: dcmqi
            # metadata's InstanceNumber (its example has one) names one instance only.
            common.pop("instance_number", None)

            written = write_segmentation_pyramid(
                mask, [source], descriptions, args.output,
                downsample_factors=_factors(args.downsample_factors, mask, source, tile_size),
                **common,
            )
        else:
            from daskseg._file import PUTTING_IN_PLACE

            # From the rename on, not from the return: a signal in between (the spool's
            # files removed) reported the complete file as interrupted.
            in_place = PUTTING_IN_PLACE.set(_outputs_in_place)
            try:
                written = [write_segmentation(mask, source, descriptions, args.output,
                                              **common)]
            finally:
                PUTTING_IN_PLACE.reset(in_place)
        _outputs_in_place()
    _signal_after_outputs(more_to_do=bool(args.stow))
    if not args.quiet:
        for path in written:
            print(f"wrote {path} ({os.path.getsize(path) / 2**20:.1f} MiB)")
        print(f"in {time.perf_counter() - start:.1f} s")
    if args.stow:
        from daskseg.dicomweb import store_instance

        headers = _dicomweb_headers()
        for path in written:
            store_instance(path, args.stow, headers=headers)
            if not args.quiet:
                print(f"stored {path} with STOW-RS: {_instance_url(args.stow, path)}")


def _instance_url(root: str, path: Any) -> str:
    """The stored instance's URL, for `daskseg info` and `decode` (PS3.18 10.4.1)."""
    import pydicom

    from daskseg.dicomweb import _redact

    header = pydicom.dcmread(path, stop_before_pixels=True,
                             specific_tags=["StudyInstanceUID", "SeriesInstanceUID",
                                            "SOPInstanceUID"])
    return (f"{_redact(root).rstrip('/')}/studies/{header.StudyInstanceUID}/series/"
            f"{header.SeriesInstanceUID}/instances/{header.SOPInstanceUID}")


def _dicomweb_headers() -> dict[str, str] | None:
    """A bearer token from $DASKSEG_DICOMWEB_TOKEN, as headers."""
    # Credentials only from the environment: never on the command line, where ps shows them.
    token = os.environ.get("DASKSEG_DICOMWEB_TOKEN")
    return {"Authorization": f"Bearer {token}"} if token else None


# SOP classes newer than pydicom's table of names (PS3.4 B.5).
_SOP_CLASS_NAMES = {"1.2.840.10008.5.1.4.1.1.66.7": "Label Map Segmentation Storage"}


def _info(args: argparse.Namespace) -> None:
    from daskseg import open_segmentation

    from daskseg.dicomweb import is_dicomweb_url

    # The reader's checks of the header and the frame index (no pixels are read): a file it
    # cannot describe is one SegmentationFileError, reported by main() in one line. A DICOMweb
    # URL: its metadata only.
    web = is_dicomweb_url(args.seg)
    seg = open_segmentation(args.seg, headers=_dicomweb_headers() if web else None)
    from daskseg._frames import HEADER_DAMAGE, damaged_header

    try:
        _describe(seg, args.seg, web)
    except BrokenPipeError:
        raise  # `daskseg info SEG | head`: main() stops quietly
    except DaskSegError:
        raise  # the reader's own words, naming the file (a ValueError too: not wrapped again)
    except HEADER_DAMAGE as error:
        # Values the reader does not need (the SOP class, the pixel spacing) read here first.
        raise damaged_header(str(args.seg), error) from error


def _describe(seg: Any, path: str, web: bool) -> None:
    """Print what ``daskseg info`` says of an open SEG."""
    from daskseg import SegmentationReader

    ds = seg.header
    if web:
        print(f"url:             {seg.path} (DICOMweb)")
    else:
        print(f"file:            {path} ({os.path.getsize(path) / 2**20:.1f} MiB)")
    sop_class = ds.SOPClassUID.name
    if sop_class == str(ds.SOPClassUID):  # pydicom 3.0 has no name for the label map class
        sop_class = _SOP_CLASS_NAMES.get(sop_class, sop_class)
    print(f"type:            {seg.segmentation_type} ({sop_class})")
    if seg.segmentation_type == "FRACTIONAL":
        print(f"fractional:      {ds.get('SegmentationFractionalType', 'unknown')}, stored as "
              f"0..{ds.get('MaximumFractionalValue', 'unknown')}")
    print(f"transfer syntax: {seg.transfer_syntax_uid.name}")
    # Type 3 (PS3.3 C.7.6.17): without it, each frame's place is in its functional groups.
    organization = ds.get("DimensionOrganizationType") or "not given (frames placed one by one)"
    print(f"organization:    {organization}")
    if isinstance(seg, SegmentationReader):
        print(f"total matrix:    {seg.shape[0]} x {seg.shape[1]} pixels")
        print(f"tiles:           {seg.tile_size[0]} x {seg.tile_size[1]} pixels, "
              f"grid {seg.grid_shape[0]} x {seg.grid_shape[1]}")
    else:
        # A SEG of a series or multi-frame image: its frames are planes of a volume.
        rows, columns = seg.frame_size
        print(f"frame size:      {rows} x {columns} pixels")
        measures = ds.SharedFunctionalGroupsSequence[0].get("PixelMeasuresSequence", [None])[0]
        if measures is not None and "PixelSpacing" in measures:
            spacing = " x ".join(f"{float(v):g}" for v in measures.PixelSpacing)
            between = measures.get("SpacingBetweenSlices")
            between = f", {float(between):g} mm between slices" if between is not None else ""
            print(f"pixel spacing:   {spacing} mm{between}")
        instances = sum(len(item.get("ReferencedInstanceSequence", []))
                        for item in ds.get("ReferencedSeriesSequence", []))
        n_series = len(ds.get("ReferencedSeriesSequence", []))
        if seg.source_frame_numbers is not None:
            print(f"source image:    one multi-frame image ({instances} in {n_series} series "
                  f"referenced); its frames with SEG frames: {len(seg.source_frame_numbers)}")
        else:
            print(f"source images:   {instances} in {n_series} series; planes with frames: "
                  f"{len(seg.source_sop_instance_uids)}")
    print(f"frames:          {seg.number_of_frames}")
    print("segments:")
    for description in seg.segment_descriptions:
        category = description.segmented_property_category.meaning
        kind = description.segmented_property_type.meaning
        print(f"  {int(description.segment_number):3d}  {description.segment_label}  "
              f"({category} / {kind})")


def _decode(args: argparse.Namespace) -> None:
    try:
        from daskseg import SegmentationReader, open_segmentation
    except ImportError:
        raise UserError("decoding needs daskseg's reader (daskseg.open_segmentation)") from None
    from daskseg.dicomweb import is_dicomweb_url

    web = is_dicomweb_url(args.seg)
    if not web and not os.path.exists(args.seg):
        raise UserError(f"{args.seg} does not exist")
    ome = args.output.rstrip("/").lower().endswith(".ome.zarr")
    nifti = args.output.lower().endswith((".nii", ".nii.gz"))
    npy = args.output.lower().endswith(".npy")
    zarr_store = args.output.rstrip("/").lower().endswith(".zarr") or "://" in args.output
    if not (ome or nifti or npy or zarr_store):
        # A name of another kind (labels.tif) became a Zarr folder under that name.
        raise UserError(f"-o {args.output}: give NAME.zarr (a Zarr store), NAME.ome.zarr, "
                        "NAME.npy, or NAME.nii.gz (a SEG of a series)")
    if os.path.exists(args.output) and not args.overwrite:
        raise UserError(f"{args.output} exists; pass --overwrite or choose another output")
    from daskseg._inputs import not_a_regular_file

    if "://" not in args.output and (
            special := not_a_regular_file(pathlib.Path(args.output))) is not None:
        raise UserError(str(special))  # before the work (the rename refuses it too, after)
    folder = os.path.dirname(os.path.abspath(args.output))
    if "://" not in args.output and not os.path.isdir(folder):  # as encode (a URL: a store's)
        raise UserError(f"The destination folder {folder} does not exist; create it first.")
    if args.combine_segments and (nifti or ome):
        raise UserError("--combine-segments is for a Zarr store (-o NAME.zarr): NIfTI output "
                        "holds labels already (--segment-axis for a volume per segment), and "
                        "OME-Zarr output one label image")
    # A DICOMweb SEG: its metadata now, its frames fetched by the tasks on the workers.
    reader = open_segmentation(args.seg, headers=_dicomweb_headers() if web else None)
    tiled = isinstance(reader, SegmentationReader)
    if args.source and not nifti:
        raise UserError("--source is for NIfTI output (-o labels.nii.gz) of a SEG of a series")
    if tiled and nifti:
        raise UserError(f"{args.seg} is a SEG of a tiled image; NIfTI output is for SEGs of "
                        "series (CT, MR...)")
    if not tiled and ome:
        raise UserError(f"{args.seg} is a SEG of a series; decode it to NIfTI "
                        "(-o labels.nii.gz), or to NumPy (-o labels.npy) or Zarr "
                        "(-o labels.zarr), its frames in the order of the source images along "
                        "the slice normal")
    if npy and "://" in args.output:
        raise UserError(f"{args.output}: a .npy output is a file on this machine")
    if args.segment_axis and not nifti:
        raise UserError("--segment-axis is for NIfTI output (-o labels.nii.gz); a Zarr store "
                        "holds one plane per segment unless --combine-segments")
    try:
        with _client(args) as client:
            if not isinstance(reader, SegmentationReader) and nifti:  # a series: its geometry
                reader.to_nifti(args.output, client=client, source_images=args.source,
                                combine_segments=False if args.segment_axis else None)
            elif npy:
                # One NumPy file, filled block by block as the blocks are decoded (a series'
                # frames in slice order).
                array = reader.to_dask(combine_segments=args.combine_segments)
                _check_room_for(array, pathlib.Path(args.output), args.combine_segments)
                _save_npy(array, pathlib.Path(args.output), client, not args.quiet,
                          args.overwrite)
            elif ome:  # an OME-NGFF image whose labels/ holds the SEG as one label image
                assert isinstance(reader, SegmentationReader)  # a series' SEG was refused above
                from daskseg import segmentation_to_ome_zarr

                segmentation_to_ome_zarr(reader, args.output, progress=not args.quiet,
                                         client=client, overwrite=args.overwrite)
            else:
                reader.to_zarr(
                    args.output, combine_segments=args.combine_segments, progress=not args.quiet,
                    client=client, overwrite=args.overwrite,
                )
            _outputs_in_place()
    except SegmentationInputError as error:
        # Segments that overlap (or fractions) cannot be one label image: say which output of
        # this command keeps them apart, rather than the library's keyword argument.
        message = str(error)
        if args.source and message.startswith("source_images"):
            raise UserError(f"--source {args.source}{message.removeprefix('source_images')}") \
                from None
        from daskseg._decode import COMBINE_ADVICE
        from daskseg.omezarr import ONE_LABEL_IMAGE

        for keyword in (*COMBINE_ADVICE, ONE_LABEL_IMAGE):
            if message.endswith(keyword):
                route = ("pass --segment-axis for one volume per segment on a fourth axis"
                         if nifti else "OME-Zarr labels are one label image; decode to a Zarr "
                         "store (-o NAME.zarr) for one plane per segment" if ome else
                         "leave out --combine-segments for one plane per segment")
                raise UserError(f"{message.removesuffix(keyword)}{route}.") from None
        raise
    _signal_after_outputs(more_to_do=False)
    if not args.quiet:
        print(f"wrote {args.output}")


def _check_room_for(array: Any, destination: pathlib.Path, combined: bool) -> None:
    """Refuse a .npy larger than the free space of its folder before decoding anything: a SEG
    of 117 segments apart is 117 planes a slice (a 1.2 GB LABELMAP made 134 GB)."""
    import shutil

    needed = int(array.nbytes)
    free = shutil.disk_usage(destination.parent).free  # Path("x.npy").parent is "."
    if needed > free:
        advice = ("; --combine-segments makes one label image of "
                  f"{_in_units(needed / array.shape[-1])}" if not combined and array.ndim
                  in (3, 4) and array.shape[-1] > 1 else "")
        raise UserError(f"{destination}: the array {tuple(array.shape)} of {array.dtype} is "
                        f"{_in_units(needed)}, more than the {_in_units(free)} free "
                        f"in its folder{advice}")


def _in_units(size: float) -> str:
    """Bytes in GiB, or in MiB or KiB when fewer (so that 16 and 4 MiB are not both 0.0 GiB)."""
    for unit, power in (("GiB", 30), ("MiB", 20), ("KiB", 10)):
        if size >= 2**power:
            return f"{size / 2**power:.1f} {unit}"
    return f"{int(size)} bytes"


def _save_npy(array: Any, destination: pathlib.Path, client: Any, progress: bool,
              overwrite: bool) -> None:
    """``array`` decoded into a .npy file: a memory map beside ``destination``, filled block by
    block (memory is a few blocks, whatever the SEG's size), renamed there when complete."""
    import numpy as np

    from daskseg._file import file_beside
    from daskseg._progress import progress_bar
    from daskseg._tasks import computed_blocks

    with file_beside(destination, ".partial", overwrite) as partial:
        stored = np.lib.format.open_memmap(partial, mode="w+", dtype=array.dtype,
                                           shape=array.shape)
        _reserve_room(partial, destination)
        with progress_bar(int(np.prod(array.numblocks)), "decoding blocks", enabled=progress,
                          client=client, unit="block") as bar:
            for region, block in computed_blocks(client, array, "decode a block of the SEG"):
                stored[region] = block
                bar.update(1)
        stored.flush()
        del stored


def _reserve_room(partial: pathlib.Path, destination: pathlib.Path) -> None:
    """Give the memory-mapped .npy its disk blocks now: the file is sparse, and a page of the
    map that the disk has no room for when it is filled kills the process (SIGBUS, exit 135,
    the partial file left behind) once another program has taken the room _check_room_for saw.
    A file system that cannot reserve keeps the sparse file."""
    import errno

    from daskseg._file import FULL_DISK_ERRNOS

    descriptor = os.open(partial, os.O_RDWR)
    try:
        os.posix_fallocate(descriptor, 0, os.fstat(descriptor).st_size)
    except OSError as error:
        if error.errno in FULL_DISK_ERRNOS:
            raise UserError(f"{destination}: no room for the array in its folder any more; "
                            "free space, or decode elsewhere") from None
        if error.errno not in (errno.EOPNOTSUPP, errno.EINVAL, errno.ENOSYS):
            raise
    finally:
        os.close(descriptor)


def _demo(args: argparse.Namespace) -> None:
    import highdicom as hd
    import numpy as np
    import zarr

    from daskseg import write_segmentation
    from daskseg.synthetic import make_segment_descriptions, make_slide, make_tissue_mask

    size, n_segments, tile = args.size, 3, 512
    folder = pathlib.Path(args.out) if args.out else pathlib.Path(tempfile.mkdtemp(prefix="daskseg-demo-"))
    folder.mkdir(parents=True, exist_ok=True)
    say = (lambda *a: None) if args.quiet else print
    say(f"daskseg demo in {folder}")
    source = make_slide(size, size, tile_size=(tile, tile))
    source_path = folder / "slide.dcm"
    source.save_as(source_path, enforce_file_format=True)
    say(f"1. synthetic slide header: {source_path} ({size} x {size} pixels, {tile}-pixel tiles)")
    mask_path = folder / "mask.zarr"
    mask = make_tissue_mask(size, size, n_segments, chunks=2048)
    target = zarr.create_array(str(mask_path), shape=mask.shape, chunks=(2048, 2048),
                               dtype="uint8", overwrite=True)
    mask.store(target, lock=False, scheduler="threads")
    say(f"2. synthetic tissue mask in Zarr: {mask_path} ({n_segments} segments, label image)")
    output = folder / "segmentation.dcm"
    with _client(args) as client:
        start = time.perf_counter()
        write_segmentation(
            str(mask_path), source_path, make_segment_descriptions(n_segments), output,
            transfer_syntax_uid=TRANSFER_SYNTAXES["jpeg2000"], client=client, overwrite=True,
            progress=not args.quiet,
        )
        elapsed = time.perf_counter() - start
        workers = len(client.scheduler_info()["workers"])
    frames = int(hd.seg.segread(output, lazy_frame_retrieval=True).NumberOfFrames)
    megapixels = size * size / 1e6
    say(f"3. wrote {output}: {frames} JPEG 2000 frames, {os.path.getsize(output) / 2**20:.1f} MiB, "
        f"in {elapsed:.1f} s on {workers} worker{'' if workers == 1 else 's'} "
        f"({megapixels / elapsed:.0f} megapixels/s, {frames / elapsed:.0f} frames/s)")
    start = time.perf_counter()
    labels = target[:]
    try:
        from daskseg import read_segmentation

        decoded = read_segmentation(output, combine_segments=True).compute(scheduler="threads")
        reader = "daskseg.read_segmentation"
    except ImportError:
        decoded = hd.seg.segread(output).get_total_pixel_matrix(combine_segments=True)
        reader = "highdicom"
    if not np.array_equal(decoded, labels):
        raise RuntimeError("the SEG read back differs from the mask")
    say(f"4. read back with {reader} in {time.perf_counter() - start:.1f} s: equal to the mask")


def _parser() -> argparse.ArgumentParser:
    from daskseg._version import __version__

    parser = argparse.ArgumentParser(
        prog="daskseg",
        description="DICOM Segmentations from masks larger than memory, on a Dask cluster.",
    )
    parser.add_argument("--version", action="version", version=f"daskseg {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def cluster_options(sub: argparse.ArgumentParser) -> None:
        group = sub.add_mutually_exclusive_group()
        group.add_argument("--scheduler", metavar="ADDRESS",
                           help="run on an existing cluster (tcp://host:8786)")
        group.add_argument("--workers", type=_positive, metavar="N",
                           help="worker processes of a LocalCluster (default: one per core)")
        sub.add_argument("--threads", type=_positive, help=argparse.SUPPRESS)  # for tests
        sub.add_argument("--quiet", "-q", action="store_true", help="no progress or messages")

    encode = commands.add_parser("encode", help="write a SEG from a mask and its slide")
    encode.add_argument("mask", help="Zarr store (path or URL), OME-Zarr label image, .npy, "
                        "TIFF, NIfTI or NRRD file")
    encode.add_argument("source", help="the slide's DICOM file or DICOMweb instance URL (header "
                        "only), or a folder holding one series (CT, MR...) or one multi-frame "
                        "image")
    encode.add_argument("-o", "--output", required=True,
                        help="the SEG file (with --pyramid: a folder)")
    encode.add_argument("--type", default="BINARY", choices=["BINARY", "FRACTIONAL", "LABELMAP"],
                        type=str.upper)
    encode.add_argument("--transfer-syntax", default="native",
                        help=", ".join(TRANSFER_SYNTAXES) + ", or a UID")
    encode.add_argument("--tile-size", help="N or RxC (default: the slide's frame size)")
    encode.add_argument("--organization", default=None, type=str.upper,
                        choices=["TILED_SPARSE", "TILED_FULL", "3D"],
                        help="TILED_SPARSE (default for a slide) or TILED_FULL; 3D for a series")
    encode.add_argument("--metadata", help="segments from dcmqi's segmentation metadata JSON")
    encode.add_argument("--label", action="append", metavar="NAME",
                        help="a segment's label, once per segment in order (1, 2, ...)")
    encode.add_argument("--pyramid", action="store_true",
                        help="write a multi-resolution pyramid of SEGs into the output folder")
    encode.add_argument("--downsample-factors", metavar="F,F,...",
                        help="pyramid levels, e.g. 2,4,8 (default: halve until a level fits "
                        "in one tile)")
    encode.add_argument("--overwrite", action="store_true", help="replace an existing output")
    encode.add_argument("--stow", metavar="ROOT",
                        help="then store the SEG(s) on this DICOMweb server with STOW-RS "
                        "(a bearer token from $DASKSEG_DICOMWEB_TOKEN)")
    cluster_options(encode)
    encode.set_defaults(run=_encode)

    decode = commands.add_parser(
        "decode", help="decode a SEG into Zarr, OME-Zarr labels, a NumPy file or NIfTI")
    decode.add_argument("seg", help="a SEG file, or a DICOMweb instance URL (a bearer token "
                        "from $DASKSEG_DICOMWEB_TOKEN)")
    decode.add_argument("-o", "--output", required=True,
                        help="the Zarr store to write; NAME.ome.zarr writes OME-Zarr labels; "
                        "NAME.npy a NumPy file; NAME.nii.gz the labels of a SEG of a series, "
                        "in its geometry")
    decode.add_argument("--overwrite", action="store_true",
                        help="replace an existing output")
    decode.add_argument("--source", metavar="SERIES",
                        help="NIfTI output: the source series (a folder), for one slice per "
                        "image, empty ones too (the SEG alone spans its planes with frames)")
    decode.add_argument("--combine-segments", action="store_true",
                        help="Zarr or .npy output: one label image instead of a stack of "
                        "segments")
    decode.add_argument("--segment-axis", action="store_true",
                        help="NIfTI output: one volume per segment on a fourth axis (for "
                        "overlapping segments; a FRACTIONAL SEG's always), not labels")
    cluster_options(decode)
    decode.set_defaults(run=_decode)

    info = commands.add_parser("info", help="describe a SEG")
    info.add_argument("seg", help="a SEG file, or a DICOMweb instance URL")
    info.set_defaults(run=_info)

    demo = commands.add_parser("demo", help="write and check a SEG of a synthetic slide")
    demo.add_argument("--size", type=int, default=8192, help="slide size in pixels (square; default 8192)")
    demo.add_argument("--out", help="folder for the demo's files (default: a temporary one)")
    cluster_options(demo)
    demo.set_defaults(run=_demo)
    return parser


# The library's messages name its keyword arguments; the command's options do the same job.
_CLI_WORDS = {
    "pass overwrite=True": "pass --overwrite",
    "as session= or headers=": "as $DASKSEG_DICOMWEB_TOKEN (a bearer token) or as "
                               "user:password@ in the URL",
    ("put user:password@ in the URL, or fetch it with daskseg.dicomweb.fetch_instance_metadata"
     "(url, headers=...) or session=, and pass the Dataset"): "set $DASKSEG_DICOMWEB_TOKEN (a "
                                                              "bearer token) or put "
                                                              "user:password@ in the URL",
}


# The library's argument names in its messages, as this command's options.
_CLI_PATTERNS = [
    (re.compile(r"segmentation_type='(\w+)'"), r"--type \1"),
    (re.compile(r"pass np\.moveaxis\(mask, 0, -1\) \(a view, no copy\)"),
     "save the mask with its segments on the last axis"),
    (re.compile(r"None \(inferred, as highdicom\) or '3D'"), "no --organization (inferred) or 3D"),
    (re.compile(r"dimension_organization_type (must be|'|is)"), r"--organization \1"),
    (re.compile(r"'TILED_SPARSE' or 'TILED_FULL'"), "TILED_SPARSE or TILED_FULL"),
]


def _in_cli_words(message: str) -> str:
    for library, command in _CLI_WORDS.items():
        message = message.replace(library, command)
    for pattern, replacement in _CLI_PATTERNS:
        message = pattern.sub(replacement, message)
    return message


def _positive(text: str) -> int:
    """An argparse type: a whole number of 1 or more."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"{value} is not 1 or more")
    return value


class _Stopped(KeyboardInterrupt):
    """SIGTERM or SIGHUP: raised in the main thread as Ctrl-C is, so that the same cleanup runs
    (partial files removed, the cluster closed)."""

    def __init__(self, signal_number: int) -> None:
        super().__init__(signal_number)
        self.signal_number = signal_number


def _stop(signal_number: int, frame: Any) -> None:
    raise _Stopped(signal_number)


@contextlib.contextmanager
def _stopped_by_signals() -> Iterator[None]:
    """Turn SIGTERM and SIGHUP (where the platform has them) into :class:`_Stopped`."""
    # Only the main thread may set handlers (main() may run in another, from a user's code).
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous_hook = sys.unraisablehook
    main_thread = threading.get_ident()
    active = True

    def send_again(signal_number: int) -> None:
        if not active:  # the command is over: the signal's default action would kill its caller
            return
        if hasattr(signal, "pthread_kill"):
            # A signal, not interrupt_main(): that one does not wake a wait for the workers.
            signal.pthread_kill(main_thread, signal_number)
        else:
            _thread.interrupt_main(signal.Signals(signal_number))

    def stop_again(unraisable: Any) -> None:
        if isinstance(unraisable.exc_value, _Stopped):
            # Raised where Python ignores exceptions (a garbage collector's callback, which
            # the cluster's scheduler in this process has): the command went on to the end.
            # The signal again, from another thread, is raised once the callback is over.
            threading.Timer(0.01, send_again, (unraisable.exc_value.signal_number,)).start()
        else:
            previous_hook(unraisable)

    previous = {}
    for name in ("SIGTERM", "SIGHUP"):
        if hasattr(signal, name):
            number = getattr(signal, name)
            previous[number] = signal.signal(number, _stop)
    sys.unraisablehook = stop_again
    try:
        yield
    finally:
        active = False
        sys.unraisablehook = previous_hook
        for number, handler in previous.items():
            # None: a handler that was not set from Python; the default is the best guess.
            signal.signal(number, signal.SIG_DFL if handler is None else handler)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the ``daskseg`` command; return its exit status."""
    args = _parser().parse_args(argv)
    _noted_signals.clear()
    try:
        with _stopped_by_signals():
            args.run(args)
    except BrokenPipeError:
        # The reader of the output went away (`daskseg info SEG | head`; the cluster's and the
        # servers' broken connections come as daskseg's errors): stop quietly, as other tools
        # do, with stdout on /dev/null so that the interpreter's flush at exit does not fail.
        with contextlib.suppress(OSError):
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 1
    except (UserError, DaskSegError, OSError) as error:
        # OSError: the user's files (missing, not writable, a folder); DaskSegError: a mistake
        # that daskseg found. Other exceptions are daskseg's bugs: their traceback is the report.
        print(f"daskseg: error: {_in_cli_words(str(error))}", file=sys.stderr)
        return 1
    except _Stopped as stopped:
        # Asked to stop (kill, a closed terminal): quietly, with the shell's status for it.
        return 128 + stopped.signal_number
    except KeyboardInterrupt:
        print("daskseg: interrupted", file=sys.stderr)
        return 130
    return 0


def console_main() -> None:
    """The ``daskseg`` command's entry point: :func:`main`, then the process's exit.

    Python's shutdown after the command (distributed's exit hooks, up to a second) would meet
    a signal with its default action: killed by it, a complete output behind a signal's
    status. There a signal ends the process at once, with the command's own status.
    """
    status = main()
    if threading.current_thread() is not threading.main_thread():
        sys.exit(status)

    def leave(*_: Any) -> None:
        with contextlib.suppress(Exception):
            sys.stdout.flush()
            sys.stderr.flush()
        os._exit(status)

    for number in _STOP_SIGNALS:
        signal.signal(number, leave)
    # Python's shutdown, in the steps Py_FinalizeEx takes first (threads joined, their exit
    # hooks, then atexit's), and the process ends here: after those steps Python puts the
    # signals' default actions back for its last half second (collecting, unloading modules),
    # and a signal there killed the finished command.
    try:
        shutdown = getattr(threading, "_shutdown", None)
        if shutdown is not None:
            shutdown()
        atexit._run_exitfuncs()
    finally:
        leave()


if __name__ == "__main__":
    console_main()
