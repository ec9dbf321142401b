"""The ``daskseg`` command: encode, decode, info and demo.

User mistakes print one line, ``daskseg: error: ...``, and exit with status 1 (2 for usage
errors, as argparse does); no traceback.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import pathlib
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from typing import Any

__all__ = ["main", "segment_descriptions_from_dcmqi"]

TRANSFER_SYNTAXES = {
    "native": "1.2.840.10008.1.2.1",
    "explicit": "1.2.840.10008.1.2.1",
    "implicit": "1.2.840.10008.1.2",
    "jpeg2000": "1.2.840.10008.1.2.4.90",
    "j2k": "1.2.840.10008.1.2.4.90",
    "jpegls": "1.2.840.10008.1.2.4.80",
    "rle": "1.2.840.10008.1.2.5",
}

_ALGORITHM_TYPES = {"AUTOMATIC", "SEMIAUTOMATIC", "MANUAL"}


class UserError(Exception):
    """A mistake in the command line or its files: reported in one line."""


def _code(item: dict[str, str]) -> Any:
    import highdicom as hd

    try:
        return hd.sr.CodedConcept(
            value=item["CodeValue"],
            scheme_designator=item["CodingSchemeDesignator"],
            meaning=item["CodeMeaning"],
        )
    except KeyError as missing:
        raise UserError(f"a code in the metadata lacks {missing}") from None


def segment_descriptions_from_dcmqi(metadata: dict | str | os.PathLike) -> tuple[list, dict]:
    """Segment descriptions and SEG options from dcmqi's segmentation metadata JSON.

    The format is the one dcmqi's ``itkimage2segimage`` reads: ``segmentAttributes`` is a list
    (one per input image) of lists of segments, each with ``labelID``, ``SegmentLabel``,
    ``SegmentAlgorithmType``, ``SegmentedPropertyCategoryCodeSequence``,
    ``SegmentedPropertyTypeCodeSequence`` and optional ``SegmentDescription``,
    ``SegmentAlgorithmName``, ``SegmentedPropertyTypeModifierCodeSequence``,
    ``AnatomicRegionSequence``, ``recommendedDisplayRGBValue``.

    Parameters
    ----------
    metadata : dict, str or os.PathLike
        The parsed JSON, or the path of the JSON file.

    Returns
    -------
    descriptions : list of highdicom.seg.SegmentDescription
        One per segment, ordered by ``labelID`` (the label value in the mask).
    options : dict
        ``write_segmentation`` options taken from the top level (``content_creator_name``,
        ``series_number``, ``instance_number``, ``content_label``, ``content_description``).
    """
    import highdicom as hd

    if not isinstance(metadata, dict):
        try:
            metadata = json.loads(pathlib.Path(metadata).read_text())
        except FileNotFoundError:
            raise UserError(f"metadata file {metadata} does not exist") from None
        except json.JSONDecodeError as error:
            raise UserError(f"metadata file {metadata} is not JSON: {error}") from None
    groups = metadata.get("segmentAttributes")
    if not groups:
        raise UserError("the metadata has no segmentAttributes")
    segments = [segment for group in groups for segment in group]
    descriptions = []
    for segment in sorted(segments, key=lambda s: int(s.get("labelID", 0))):
        if "labelID" not in segment:
            raise UserError("a segment in the metadata has no labelID")
        algorithm_type = segment.get("SegmentAlgorithmType", "AUTOMATIC").upper()
        if algorithm_type not in _ALGORITHM_TYPES:
            raise UserError(f"unknown SegmentAlgorithmType {algorithm_type!r}")
        algorithm = None
        if algorithm_type != "MANUAL":
            algorithm = hd.AlgorithmIdentificationSequence(
                name=segment.get("SegmentAlgorithmName", "unknown"),
                version=segment.get("SegmentAlgorithmVersion", "unknown"),
                family=hd.sr.CodedConcept("123110", "DCM", "Artificial Intelligence"),
            )
        options: dict[str, Any] = {}
        if "AnatomicRegionSequence" in segment:
            options["anatomic_regions"] = [_code(segment["AnatomicRegionSequence"])]
        if "recommendedDisplayRGBValue" in segment:
            options["display_color"] = hd.color.CIELabColor.from_rgb(
                *[float(v) for v in segment["recommendedDisplayRGBValue"]]
            )
        if "SegmentedPropertyCategoryCodeSequence" not in segment or (
            "SegmentedPropertyTypeCodeSequence" not in segment
        ):
            raise UserError(
                f"segment {segment['labelID']} lacks SegmentedPropertyCategoryCodeSequence "
                "or SegmentedPropertyTypeCodeSequence"
            )
        description = hd.seg.SegmentDescription(
            segment_number=int(segment["labelID"]),
            segment_label=segment.get("SegmentLabel", f"Segment {segment['labelID']}"),
            segmented_property_category=_code(segment["SegmentedPropertyCategoryCodeSequence"]),
            segmented_property_type=_code(segment["SegmentedPropertyTypeCodeSequence"]),
            algorithm_type=algorithm_type,
            algorithm_identification=algorithm,
            **options,
        )
        if "SegmentDescription" in segment:
            description.SegmentDescription = segment["SegmentDescription"]
        if "SegmentedPropertyTypeModifierCodeSequence" in segment:
            # PS3.3 C.8.20.2: the modifier sits inside the property type's code item.
            description.SegmentedPropertyTypeCodeSequence[0].SegmentedPropertyTypeModifierCodeSequence = [
                _code(segment["SegmentedPropertyTypeModifierCodeSequence"])
            ]
        descriptions.append(description)
    options = {}
    for key, option in [
        ("ContentCreatorName", "content_creator_name"),
        ("SeriesDescription", "content_description"),
        ("ContentLabel", "content_label"),
    ]:
        if key in metadata:
            options[option] = metadata[key]
    for key, option in [("SeriesNumber", "series_number"), ("InstanceNumber", "instance_number")]:
        if key in metadata:
            options[option] = int(metadata[key])
    return descriptions, options


def _open_mask(path: str) -> Any:
    """A mask from a Zarr store (path or URL), a .npy, TIFF or NIfTI file, without reading it."""
    lower = path.lower().rstrip("/")
    if lower.endswith(".npy"):
        import numpy as np

        try:
            return np.load(path, mmap_mode="r")
        except FileNotFoundError:
            raise UserError(f"mask {path} does not exist") from None
    if lower.endswith((".tif", ".tiff")):
        import dask.array as da
        import tifffile
        import zarr

        try:
            store = tifffile.imread(path, aszarr=True)
        except FileNotFoundError:
            raise UserError(f"mask {path} does not exist") from None
        return da.from_zarr(zarr.open_array(store, mode="r"))
    if "://" not in path and not os.path.exists(path):
        raise UserError(f"mask {path} does not exist")
    return path  # a Zarr store or a NIfTI file: write_segmentation opens it


@contextlib.contextmanager
def _client(args: argparse.Namespace) -> Iterator[Any]:
    from distributed import Client

    from daskseg import local_cluster

    if args.scheduler:
        with Client(args.scheduler) as client:
            yield client
        return
    # A user's mistake found in a block task is reported as one line by main(); the workers'
    # own log of the failed task (with its traceback) would only repeat it.
    options: dict[str, Any] = {"silence_logs": logging.CRITICAL}
    if args.threads:
        options.update(processes=False, threads_per_worker=args.threads)
    with local_cluster(args.workers, **options) as cluster, Client(cluster) as client:
        yield client


def _label_descriptions(labels: Sequence[str], segmentation_type: str) -> list:
    from daskseg.synthetic import make_segment_descriptions

    return make_segment_descriptions(
        len(labels), segmentation_type=segmentation_type, labels=list(labels)
    )


def _factors(text: str | None, mask: Any, source: str, tile_size: Any) -> list[float]:
    """``--downsample-factors``, or powers of two until a level is smaller than a tile."""
    if text:
        try:
            return [float(v) for v in text.split(",")]
        except ValueError:
            raise UserError(f"--downsample-factors takes numbers like 2,4,8, not {text!r}") from None
    import pydicom

    header = pydicom.dcmread(source, stop_before_pixels=True)
    size = min(int(header.TotalPixelMatrixRows), int(header.TotalPixelMatrixColumns))
    tile = min(tile_size) if tile_size else min(int(header.Rows), int(header.Columns))
    factors: list[float] = []
    while size / (2 ** (len(factors) + 1)) >= tile:
        factors.append(float(2 ** (len(factors) + 1)))
    return factors or [2.0]


def _encode(args: argparse.Namespace) -> None:
    from daskseg import write_segmentation

    if bool(args.metadata) == bool(args.label):
        raise UserError("give the segments with --metadata FILE or with --label NAME (not both)")
    mask = _open_mask(args.mask)
    if args.metadata:
        descriptions, options = segment_descriptions_from_dcmqi(args.metadata)
    else:
        descriptions, options = _label_descriptions(args.label, args.type), {}
    tile_size = None
    if args.tile_size:
        try:
            parts = [int(v) for v in args.tile_size.lower().split("x")]
        except ValueError:
            raise UserError(f"--tile-size takes N or RxC, not {args.tile_size!r}") from None
        tile_size = (parts[0], parts[-1])
    syntax = TRANSFER_SYNTAXES.get(args.transfer_syntax.lower(), args.transfer_syntax)
    start = time.perf_counter()
    with _client(args) as client:
        common = dict(
            segmentation_type=args.type, transfer_syntax_uid=syntax, tile_size=tile_size,
            dimension_organization_type=args.organization, client=client,
            overwrite=args.overwrite, progress=not args.quiet, **options,
        )
        if args.pyramid:
            from daskseg import write_segmentation_pyramid

            written = write_segmentation_pyramid(
                mask, [args.source], descriptions, args.output,
                downsample_factors=_factors(args.downsample_factors, mask, args.source, tile_size),
                **common,
            )
        else:
            written = [write_segmentation(mask, args.source, descriptions, args.output, **common)]
    if not args.quiet:
        for path in written:
            print(f"wrote {path} ({os.path.getsize(path) / 2**20:.1f} MiB)")
        print(f"in {time.perf_counter() - start:.1f} s")


def _info(args: argparse.Namespace) -> None:
    import pydicom

    try:
        ds = pydicom.dcmread(args.seg, stop_before_pixels=True)
    except FileNotFoundError:
        raise UserError(f"{args.seg} does not exist") from None
    except pydicom.errors.InvalidDicomError:
        raise UserError(f"{args.seg} is not a DICOM file") from None
    if "SegmentSequence" not in ds:
        raise UserError(f"{args.seg} is not a DICOM Segmentation")
    rows, columns = int(ds.Rows), int(ds.Columns)
    print(f"file:            {args.seg} ({os.path.getsize(args.seg) / 2**20:.1f} MiB)")
    print(f"type:            {ds.SegmentationType} ({ds.SOPClassUID.name})")
    print(f"transfer syntax: {ds.file_meta.TransferSyntaxUID.name}")
    print(f"organization:    {ds.get('DimensionOrganizationType', 'unknown')}")
    if "TotalPixelMatrixRows" in ds:
        total = (int(ds.TotalPixelMatrixRows), int(ds.TotalPixelMatrixColumns))
        grid = (-(-total[0] // rows), -(-total[1] // columns))
        print(f"total matrix:    {total[0]} x {total[1]} pixels")
        print(f"tiles:           {rows} x {columns} pixels, grid {grid[0]} x {grid[1]}")
    else:
        # A SEG of a series or multi-frame image: its frames are planes of a volume.
        print(f"frame size:      {rows} x {columns} pixels")
        measures = ds.SharedFunctionalGroupsSequence[0].get("PixelMeasuresSequence", [None])[0]
        if measures is not None and "PixelSpacing" in measures:
            spacing = " x ".join(f"{float(v):g}" for v in measures.PixelSpacing)
            between = measures.get("SpacingBetweenSlices")
            between = f", {float(between):g} mm between slices" if between is not None else ""
            print(f"pixel spacing:   {spacing} mm{between}")
        instances = sum(len(item.get("ReferencedInstanceSequence", []))
                        for item in ds.get("ReferencedSeriesSequence", []))
        print(f"source images:   {instances} in {len(ds.get('ReferencedSeriesSequence', []))} "
              "series")
    print(f"frames:          {int(ds.NumberOfFrames)}")
    print("segments:")
    for item in ds.SegmentSequence:
        category = item.SegmentedPropertyCategoryCodeSequence[0].CodeMeaning
        kind = item.SegmentedPropertyTypeCodeSequence[0].CodeMeaning
        print(f"  {int(item.SegmentNumber):3d}  {item.SegmentLabel}  ({category} / {kind})")


def _decode(args: argparse.Namespace) -> None:
    try:
        from daskseg import open_segmentation
    except ImportError:
        raise UserError("decoding needs daskseg's reader (daskseg.open_segmentation)") from None
    if not os.path.exists(args.seg):
        raise UserError(f"{args.seg} does not exist")
    with _client(args) as client:
        open_segmentation(args.seg).to_zarr(
            args.output, combine_segments=args.combine_segments, progress=not args.quiet,
            client=client,
        )
    if not args.quiet:
        print(f"wrote {args.output}")


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
        f"in {elapsed:.1f} s on {workers} workers "
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
    from daskseg import __version__

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
        group.add_argument("--workers", type=int, metavar="N",
                           help="worker processes of a LocalCluster (default: one per core)")
        sub.add_argument("--threads", type=int, help=argparse.SUPPRESS)  # in-process, for tests
        sub.add_argument("--quiet", "-q", action="store_true", help="no progress or messages")

    encode = commands.add_parser("encode", help="write a SEG from a mask and its slide")
    encode.add_argument("mask", help="Zarr store (path or URL), .npy, TIFF or NIfTI file")
    encode.add_argument("source", help="the slide's DICOM file, or a folder holding one series "
                        "(CT, MR...) or one multi-frame image (read without pixel data)")
    encode.add_argument("-o", "--output", required=True,
                        help="the SEG file (with --pyramid: a folder)")
    encode.add_argument("--type", default="BINARY", choices=["BINARY", "FRACTIONAL", "LABELMAP"],
                        type=str.upper)
    encode.add_argument("--transfer-syntax", default="native",
                        help="native, implicit, jpeg2000, jpegls, rle, or a UID")
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
                        help="pyramid levels, e.g. 2,4,8 (default: halve until below a tile)")
    encode.add_argument("--overwrite", action="store_true", help="replace an existing output")
    cluster_options(encode)
    encode.set_defaults(run=_encode)

    decode = commands.add_parser("decode", help="decode a SEG into a Zarr store")
    decode.add_argument("seg")
    decode.add_argument("-o", "--output", required=True, help="the Zarr store to write")
    decode.add_argument("--combine-segments", action="store_true",
                        help="one label image instead of a stack of segments")
    cluster_options(decode)
    decode.set_defaults(run=_decode)

    info = commands.add_parser("info", help="describe a SEG")
    info.add_argument("seg")
    info.set_defaults(run=_info)

    demo = commands.add_parser("demo", help="write and check a SEG of a synthetic slide")
    demo.add_argument("--size", type=int, default=8192, help="slide size in pixels (square)")
    demo.add_argument("--out", help="folder for the demo's files (default: a temporary one)")
    cluster_options(demo)
    demo.set_defaults(run=_demo)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the ``daskseg`` command; return its exit status."""
    from daskseg.errors import DaskSegError

    args = _parser().parse_args(argv)
    try:
        args.run(args)
    except (UserError, DaskSegError, ValueError, TypeError, FileNotFoundError,
            FileExistsError, NotADirectoryError, PermissionError) as error:
        print(f"daskseg: error: {error}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("daskseg: interrupted", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
