"""DICOM SEG <-> OME-Zarr (OME-NGFF 0.5) label images, for napari, ome-zarr-py and the IDR.

Written layout (NGFF 0.5, Zarr v3, as ome-zarr-py 0.18 writes and reads it)::

    out.ome.zarr/              image group: "multiscales" (axes y, x)
        s0, s1, ...            the image: empty placeholders (see below)
        labels/                "labels": [name]
            <name>/            "multiscales" + "image-label" (colors, properties, source)
                s0, s1, ...    the segmentation as one label image, halved level by level

OME-NGFF keeps label images under an image's ``labels/`` group, and the image group must hold
a multiscale image. A SEG carries no pixels of its source, so the image's levels are arrays of
the labels' shapes whose every chunk equals the fill value (0): Zarr stores no chunk for them,
so they cost a few hundred bytes of metadata, and viewers overlay the labels on a blank image
of the right size and pixel spacing. (Copying the labels in as the image would double the
store for nothing.)

Level 0 is :func:`daskseg.read_segmentation` with ``combine_segments=True`` (values are the
segment numbers), decoded block by block on the cluster; each further level is the one above
halved with nearest-neighbour picking (:func:`daskseg.pyramid.downsample`), read back from the
store block by block, down to the first level that fits in one SEG tile. Memory is a block at a
time whatever the size. Coordinate transformations carry the SEG's PixelSpacing (PS3.3
C.7.6.16.2.1, millimetres) in micrometres, with the half-pixel translation of each level's
pixel centres, as ome-zarr-py computes them.
"""

from __future__ import annotations

import contextlib
import os
import pathlib
import shutil
import uuid
from typing import Any

import dask.array as da
import highdicom as hd
import numpy as np
from highdicom.sr.coding import CodedConcept
from pydicom.dataset import Dataset
from pydicom.sr.codedict import codes

from daskseg._client import cluster_client
from daskseg._colors import segment_rgb
from daskseg._dcmqi import segment_descriptions_from_labels
from daskseg._file import naming_a_full_disk, replace_tree
from daskseg._inputs import check_store_folder, parse_segmentation_type
from daskseg._progress import progress_bar
from daskseg._tasks import block_tasks, compute_settled, run_windowed
from daskseg.errors import (
    DestinationExistsError,
    MissingDependencyError,
    SegmentationInputError,
    SegmentationTypeError,
)
from daskseg.pyramid import downsample
from daskseg._decode import COMBINE_ADVICE, store_block
from daskseg.read import SegmentationReader

__all__ = ["segment_descriptions_from_ome_zarr", "segmentation_to_ome_zarr"]

_AXES = ("y", "x")


def _ome_zarr_format():
    """ome-zarr-py's NGFF 0.5 format and metadata writers, or an error naming the extra."""
    try:
        from ome_zarr.format import FormatV05
        from ome_zarr.writer import write_label_metadata, write_multiscales_metadata
    except ImportError as error:
        raise MissingDependencyError(
            "Writing OME-Zarr needs ome-zarr-py: pip install 'daskseg[ome-zarr]'."
        ) from error
    return FormatV05(), write_multiscales_metadata, write_label_metadata


def _pixel_spacing_um(reader: SegmentationReader) -> tuple[float, float] | None:
    """Row and column spacing in micrometres from the SEG's Pixel Measures, if it has them."""
    with contextlib.suppress(AttributeError, IndexError, KeyError, TypeError):
        spacing = reader.header.SharedFunctionalGroupsSequence[0].PixelMeasuresSequence[0].PixelSpacing
        return float(spacing[0]) * 1000.0, float(spacing[1]) * 1000.0
    return None


def _level_shapes(shape: tuple[int, int], tile: tuple[int, int]) -> list[tuple[int, int]]:
    """Level 0, then halved (rounded down, as ome-zarr-py) until a level fits in one tile."""
    shapes = [(shape[0], shape[1])]
    while (shapes[-1][0] > tile[0] or shapes[-1][1] > tile[1]) and min(shapes[-1]) >= 2:
        shapes.append((shapes[-1][0] // 2, shapes[-1][1] // 2))
    return shapes


def _datasets(shapes: list[tuple[int, int]], spacing: tuple[float, float]) -> list[dict]:
    """NGFF datasets: each level's path, scale and the half-pixel shift of its pixel centres."""
    datasets = []
    for index, shape in enumerate(shapes):
        ratio = [shapes[0][axis] / shape[axis] for axis in range(2)]
        datasets.append({
            "path": f"s{index}",
            "coordinateTransformations": [
                {"type": "scale", "scale": [spacing[a] * ratio[a] for a in range(2)]},
                {"type": "translation", "translation": [spacing[a] * (ratio[a] - 1) / 2 for a in range(2)]},
            ],
        })
    return datasets


def _code(concept: Any, modifiers: str | None = None) -> dict[str, Any]:
    """A coded concept as a JSON object; with its ``modifiers`` sequence's codes, if it has any
    (a property type's or an anatomic region's laterality, say: PS3.3 C.8.20.2)."""
    code: dict[str, Any] = {
        "code-value": str(concept.value), "coding-scheme-designator": str(concept.scheme_designator),
        "code-meaning": str(concept.meaning)}
    if modifiers is not None and concept.get(modifiers):
        code["modifiers"] = [_code(CodedConcept.from_dataset(item)) for item in concept.get(modifiers)]
    return code


# The modifier sequence of each coded item of a segment description that may have one.
_MODIFIERS = {
    "SegmentedPropertyTypeCodeSequence": "SegmentedPropertyTypeModifierCodeSequence",
    "AnatomicRegionSequence": "AnatomicRegionModifierSequence",
    "PrimaryAnatomicStructureSequence": "PrimaryAnatomicStructureModifierSequence",
}


def _image_label(reader: SegmentationReader) -> dict[str, Any]:
    """The ``image-label`` colors and properties of the SEG's segments."""
    colors, properties = [], []
    rgb = segment_rgb(reader.segment_descriptions)
    for number, item in zip(reader.segment_numbers, reader.segment_descriptions):
        colors.append({"label-value": number, "rgba": [*rgb[number], 255]})
        entry: dict[str, Any] = {
            "label-value": number,
            "segment-number": number,
            "segment-label": str(item.SegmentLabel),
            "segmented-property-category": _code(item.segmented_property_category),
            "segmented-property-type": _code(item.SegmentedPropertyTypeCodeSequence[0],
                                             _MODIFIERS["SegmentedPropertyTypeCodeSequence"]),
            "segment-algorithm-type": str(item.SegmentAlgorithmType),
        }
        if "SegmentAlgorithmName" in item:
            entry["segment-algorithm-name"] = str(item.SegmentAlgorithmName)
        # The rest of the description (PS3.3 C.8.20.2), so that SEG -> OME-Zarr -> SEG keeps
        # it: keys in the style of the ones above, which OME-NGFF leaves to the writer.
        algorithm = item.algorithm_identification
        if algorithm is not None:
            entry["segment-algorithm-version"] = str(algorithm.version)
            entry["segment-algorithm-family"] = _code(algorithm.family)
        if "SegmentDescription" in item:
            entry["segment-description"] = str(item.SegmentDescription)
        if item.tracking_id is not None:
            entry["tracking-id"] = str(item.tracking_id)
        if item.tracking_uid is not None:
            entry["tracking-uid"] = str(item.tracking_uid)
        for key, sequence in (("anatomic-regions", "AnatomicRegionSequence"),
                              ("primary-anatomic-structures", "PrimaryAnatomicStructureSequence")):
            if item.get(sequence):
                entry[key] = [_code(concept, _MODIFIERS[sequence]) for concept in item.get(sequence)]
        properties.append(entry)
    # NGFF 0.5 "image-label": "source" points from the label image back to its image.
    return {"colors": colors, "properties": properties, "source": {"image": "../../"}}


def _write_level(array: da.Array, target: Any, client: Any, bar: Any) -> None:
    """Store ``array`` into the Zarr array ``target`` block by block (one block per task)."""
    if client is None:
        compute_settled(da.store(array, target, lock=False, compute=False, return_stored=False))
        bar.update(int(np.prod(array.numblocks)))
        return
    stored = array.map_blocks(store_block, target=target, dtype=np.int64,
                              chunks=tuple((1,) * n for n in array.numblocks))
    for _ in run_windowed(client, block_tasks(stored).ravel().tolist(),
                          "write a block of the OME-Zarr labels", settle=True):
        bar.update(1)


def segmentation_to_ome_zarr(
    seg: str | os.PathLike | SegmentationReader,
    store: str | os.PathLike,
    *,
    name: str = "segmentation",
    chunks: int | tuple[int, int] | None = None,
    overwrite: bool = False,
    progress: bool = False,
    client: Any = None,
) -> pathlib.Path:
    """Decode a SEG into an OME-Zarr (NGFF 0.5) image whose ``labels/`` holds it.

    Parameters
    ----------
    seg : str, os.PathLike or SegmentationReader
        The SEG file (or an opened one).
    store : str or os.PathLike
        The local folder to create, conventionally ``*.ome.zarr``.
    name : str
        The label image's name under ``labels/``.
    chunks : int or (int, int), optional
        Chunk size in pixels (rounded to whole tiles at level 0); about 2048 by default.
    overwrite : bool
        Replace an existing ``store``.
    progress : bool
        Show a progress bar of blocks written.
    client : distributed.Client, optional
        Run on this cluster; by default the current client, or Dask's threads if none.

    Returns
    -------
    pathlib.Path
        The store written. ``ome_zarr.reader.Reader`` (and napari-ome-zarr) find the label
        image with its levels, its colours and a property entry per segment ("segment-number",
        "segment-label", "segmented-property-category", "segmented-property-type").

    Raises
    ------
    MissingDependencyError
        ome-zarr-py is not installed (``pip install 'daskseg[ome-zarr]'``).
    DestinationExistsError
        ``store`` exists and ``overwrite`` is False.
    SegmentationInputError
        The SEG cannot be read; when computed, its segments overlap (as
        :func:`daskseg.read_segmentation` with ``combine_segments=True``).

    Examples
    --------
    >>> segmentation_to_ome_zarr("seg.dcm", "seg.ome.zarr")  # doctest: +SKIP
    """
    import zarr

    fmt, write_multiscales_metadata, write_label_metadata = _ome_zarr_format()
    if not isinstance(seg, (SegmentationReader, str, os.PathLike)):
        kind = type(seg).__name__
        raise SegmentationTypeError(
            f"seg is a SEG's path or a SegmentationReader (of a tiled image), not {kind}"
            + (": a SEG of a series decodes to NIfTI (to_nifti)." if kind ==
               "VolumeSegmentationReader" else ".")
        )
    reader = seg if isinstance(seg, SegmentationReader) else SegmentationReader(seg)
    if "://" in str(store):
        raise SegmentationInputError(f"store must be a local folder, not {str(store)!r}.")
    # A Zarr node's name (Zarr v3 spec, "Node names"): "" would put the label image in labels/
    # itself, where readers look for the list of label images.
    if (not isinstance(name, str) or name in ("", ".", "..") or "/" in name
            or name.startswith("__") or name.strip(".") == ""):
        raise SegmentationInputError(
            f"name {name!r} is not a Zarr node name for the label image: give a non-empty name "
            "without '/', not '.' or '..', not starting with '__'."
        )
    # Absolute: the workers write the chunks, and those started in another folder wrote there.
    destination = pathlib.Path(os.path.abspath(store))
    if destination.exists() and not overwrite:
        raise DestinationExistsError(f"{destination} exists; pass overwrite=True to replace it.")
    check_store_folder(destination)
    labels = reader.to_dask(combine_segments=True, chunks=chunks)
    image_label = _image_label(reader)  # the segments' descriptions: checked before writing
    shapes = _level_shapes(labels.shape, reader.tile_size)
    spacing = _pixel_spacing_um(reader)
    unit = {"unit": "micrometer"} if spacing else {}
    axes = [{"name": axis, "type": "space", **unit} for axis in _AXES]
    datasets = _datasets(shapes, spacing or (1.0, 1.0))
    chunk_shape = (labels.chunks[0][0], labels.chunks[1][0])
    with cluster_client(client, start=False) as client:
        # Built next to the destination and renamed at the end: a failure leaves nothing behind.
        partial = destination.with_name(f".{destination.name}.{uuid.uuid4().hex[:8]}.partial")
        try:
            root = zarr.open_group(str(partial), mode="w", zarr_format=3)
            label_group = root.require_group(f"labels/{name}")
            n_blocks = sum(
                int(np.prod([-(-s // c) for s, c in zip(shape, chunk_shape)])) for shape in shapes
            )
            with progress_bar(n_blocks, "writing OME-Zarr blocks", enabled=progress, client=client,
                              unit="block") as bar:
                level = labels
                for index, shape in enumerate(shapes):
                    chunk = tuple(min(c, s) for c, s in zip(chunk_shape, shape))
                    if index:
                        level = downsample(da.from_zarr(label_group[f"s{index - 1}"]), shape, "nearest",
                                           da.core.normalize_chunks(chunk, shape))
                    target = label_group.create_array(f"s{index}", shape=shape, chunks=chunk,
                                                      dtype=labels.dtype, fill_value=0,
                                                      dimension_names=_AXES)
                    try:
                        with naming_a_full_disk(destination, "the OME-Zarr store",
                                                spooled=False):
                            _write_level(level, target, client, bar)
                    except SegmentationInputError as error:
                        raise _one_label_image(error) from None
                    # The image's placeholder level: no chunk is ever written, see the module's notes.
                    root.create_array(f"s{index}", shape=shape, chunks=chunk, dtype="uint8",
                                      fill_value=0, dimension_names=_AXES)
            write_multiscales_metadata(root, datasets, fmt=fmt, axes=axes, name="image")
            write_multiscales_metadata(label_group, datasets, fmt=fmt, axes=axes, name=name)
            write_label_metadata(root["labels"], name, fmt=fmt, **image_label)
            # NGFF 0.5: every OME-Zarr group's "ome" names its version; ome-zarr-py 0.18 leaves it
            # out of labels/ (which ome-zarr-models' validator then refuses).
            root["labels"].attrs["ome"] = {**_ome(root["labels"]), "version": fmt.version}
            replace_tree(partial, destination)
        except BaseException:
            shutil.rmtree(partial, ignore_errors=True)
            raise
        return destination


#: The end of the message of a SEG whose segments make no one label image, in this function.
ONE_LABEL_IMAGE = ("OME-Zarr labels are one label image: decode the segments apart with "
                   "SegmentationReader.to_zarr (one plane per segment).")


def _one_label_image(error: SegmentationInputError) -> SegmentationInputError:
    """The reader's error for segments that cannot be combined, with this function's way out:
    its advice (combine_segments=False) names an argument that segmentation_to_ome_zarr has not."""
    message = str(error)
    for advice in COMBINE_ADVICE:
        if message.endswith(advice):
            return type(error)(message.removesuffix(advice) + ONE_LABEL_IMAGE)
    return error


# ------------------------------------------------------------------ OME-Zarr -> mask


def _ome(group: Any) -> dict:
    """A group's OME metadata: under "ome" in Zarr v3 (NGFF 0.5), at the top in v2 (0.4)."""
    attrs = dict(group.attrs)
    return dict(attrs.get("ome", attrs))


def _label_group(mask: Any) -> Any | None:
    """The label image group that ``mask`` (an OME-Zarr image, its labels/, or a label image)
    names, or None when it is not an OME-Zarr group."""
    import zarr

    if isinstance(mask, zarr.Group):
        group = mask
    else:
        try:
            group = zarr.open_group(str(mask), mode="r")
        except Exception:  # an array, a missing path, not Zarr: not ours to explain
            return None
    meta = _ome(group)
    if "image-label" in meta:
        return group
    if "labels" in meta and "multiscales" not in meta:  # the labels/ group itself
        names, parent = list(meta["labels"]), group
    elif "labels" in group.group_keys() and "multiscales" in meta:  # an image with labels
        parent = group["labels"]  # type: ignore[assignment]
        names = list(_ome(parent).get("labels", []))
    elif "multiscales" in meta:
        raise SegmentationInputError(
            f"The OME-Zarr image {group.store_path} has no labels/ group; give the path of a "
            "label image (an image's labels/<name>) or of its level 0 array."
        )
    else:
        return None
    if len(names) != 1:
        raise SegmentationInputError(
            f"The OME-Zarr image {group.store_path} holds {len(names)} label images "
            f"({', '.join(names) or 'none'}); give the path of one: .../labels/<name>."
        )
    return parent[names[0]]


def _ome_label_mask(mask: Any) -> da.Array | None:
    """Level 0 of an OME-Zarr label image as a (rows, columns) Dask array, or None if ``mask``
    is not an OME-Zarr group."""
    group = _label_group(mask)
    if group is None:
        return None
    multiscales = _ome(group).get("multiscales")
    multiscale = multiscales[0] if isinstance(multiscales, list) and multiscales else {}
    datasets = multiscale.get("datasets") if isinstance(multiscale, dict) else None
    if not datasets or not isinstance(datasets, list) or not isinstance(datasets[0], dict):
        raise SegmentationInputError(f"The OME-Zarr label image {group.store_path} lists no datasets.")
    path = datasets[0].get("path")
    try:
        array = da.from_zarr(group[str(path)])
    except (KeyError, TypeError, ValueError) as error:  # no such node, or a group
        raise SegmentationInputError(
            f"The first dataset of the OME-Zarr label image {group.store_path}, {path!r}, is no "
            f"Zarr array in it ({error!r})."
        ) from None
    shape = array.shape
    names = _axis_names(multiscale.get("axes"), array.ndim)
    if names is not None:
        # NGFF: the axes are in the order of the array's dimensions, so a label image written
        # (x, y) is transposed here; every other axis must be a singleton.
        if any(size != 1 for name, size in zip(names, shape) if name not in ("y", "x")):
            raise SegmentationInputError(
                f"The OME-Zarr label image {group.store_path} has shape {shape} on axes "
                f"{names}; daskseg writes SEGs of one (y, x) plane (other axes must have size 1)."
            )
        array = array[tuple(slice(None) if name in ("y", "x") else 0 for name in names)]
        if [name for name in names if name in ("y", "x")] == ["x", "y"]:
            array = array.T
        return array
    # ome-zarr-py writes (t, c, z, y, x) labels too: a plane among singleton axes is still a plane.
    while array.ndim > 2 and array.shape[0] == 1:
        array = array[0]
    if array.ndim != 2:
        raise SegmentationInputError(
            f"The OME-Zarr label image {group.store_path} has shape {shape}; daskseg writes "
            "SEGs of one (y, x) plane (other axes must have size 1)."
        )
    return array


def _axis_names(axes: Any, ndim: int) -> list[str] | None:
    """The names of a multiscale's axes (NGFF 0.4+: objects with "name"; 0.3: strings) when
    they are one per dimension and include y and x once each; else None (no axes to go by)."""
    if not isinstance(axes, list) or len(axes) != ndim:
        return None
    names = [str(axis.get("name")) if isinstance(axis, dict) else str(axis) for axis in axes]
    if names.count("y") != 1 or names.count("x") != 1:
        return None
    return names


def _concept(value: Any, default: CodedConcept) -> CodedConcept:
    if isinstance(value, dict) and {"code-value", "coding-scheme-designator", "code-meaning"} <= set(value):
        return CodedConcept(value["code-value"], value["coding-scheme-designator"], value["code-meaning"])
    return default


def segment_descriptions_from_ome_zarr(
    path: str | os.PathLike,
    *,
    segmentation_type: str = "BINARY",
) -> list[hd.seg.SegmentDescription]:
    """Segment descriptions from an OME-Zarr label image's ``image-label`` metadata.

    Each label value listed in ``properties`` or ``colors`` (other than 0, the background)
    becomes the segment of that number: its label from "segment-label" (else "Segment N"),
    its coded category and type from "segmented-property-category" / "segmented-property-type"
    as daskseg writes them (else Tissue), its display colour from ``colors``.

    Parameters
    ----------
    path : str or os.PathLike
        An OME-Zarr image with one label image, its ``labels/<name>`` group.
    segmentation_type : str
        The SEG's type; LABELMAP segments without a colour get a distinct one each.

    Returns
    -------
    list of highdicom.seg.SegmentDescription
        In segment-number order, ready for :func:`daskseg.write_segmentation`.

    Raises
    ------
    SegmentationInputError
        ``path`` is not an OME-Zarr label image, its metadata lists no labels, or the label
        values are not 1, 2, ... N (DICOM segment numbers; PS3.3 C.8.20.4) for BINARY or
        FRACTIONAL; a LABELMAP's may skip numbers (its pixels hold them, as in highdicom).
    """
    return _ome_zarr_segments(path, segmentation_type, renumber=False)[0]


def _ome_zarr_segments(
    path: str | os.PathLike, segmentation_type: str, *, renumber: bool
) -> tuple[list[hd.seg.SegmentDescription], list[int] | None]:
    """:func:`segment_descriptions_from_ome_zarr`; with ``renumber``, BINARY and FRACTIONAL
    label values that skip (3, 8) become segments 1..n and are returned too (the
    ``label_values`` to write them with), as for dcmqi's labelIDs; else None."""
    group = _label_group(path)
    if group is None:
        raise SegmentationInputError(f"{os.fspath(path)} is not an OME-Zarr image or label image.")
    meta = _ome(group).get("image-label", {})
    properties = _by_label_value(meta, "properties", group.store_path)
    colors = {number: entry.get("rgba")
              for number, entry in _by_label_value(meta, "colors", group.store_path).items()}
    numbers = sorted((set(properties) | set(colors)) - {0})
    if not numbers:
        raise SegmentationInputError(
            f"The label image {group.store_path} lists no labels in its image-label metadata; "
            "give the segments' descriptions."
        )
    labelmap = parse_segmentation_type(segmentation_type) == "LABELMAP"
    skipping = numbers != list(range(1, len(numbers) + 1))
    if labelmap and numbers[-1] > 65535:
        raise SegmentationInputError(
            f"The label image {group.store_path} holds label {numbers[-1]}, but a LABELMAP's "
            "segment numbers (its pixel values) are at most 65535; write BINARY segments."
        )
    if skipping and not labelmap and not renumber:
        raise SegmentationInputError(
            f"The label values {numbers} of {group.store_path} are not 1..{len(numbers)}: the "
            "segments of a BINARY or FRACTIONAL SEG are numbered from 1 without gaps; read them "
            "with segmentation_type='LABELMAP', number them 1..n and give write_segmentation "
            "the values as label_values (daskseg encode does so), or write a LABELMAP."
        )
    renumbered = skipping and not labelmap
    defaults = segment_descriptions_from_labels([f"Segment {n}" for n in numbers], segmentation_type)
    descriptions = []
    for position, (number, default) in enumerate(zip(numbers, defaults), 1):
        props = properties.get(number, {})
        try:
            descriptions.append(_ome_zarr_segment(
                position if renumbered else number, number, props, colors.get(number), default,
            ))
        except (TypeError, ValueError, KeyError, IndexError) as error:
            raise SegmentationInputError(
                f"The image-label metadata of label {number} in {group.store_path} does not "
                f"make a segment description: {error}. Correct it, or give the segments' "
                "descriptions (daskseg encode: --label or --metadata)."
            ) from error
    return descriptions, numbers if renumbered else None


def _by_label_value(meta: Any, key: str, where: str) -> dict[int, dict[str, Any]]:
    """The entries of an image-label's ``key`` list ("properties", "colors") by label value,
    refused unless as NGFF's "Labels" gives them: objects whose "label-value" is an integer."""
    if not isinstance(meta, dict):
        raise SegmentationInputError(
            f"The image-label metadata of {where} is not an object (NGFF: image-label): "
            f"{meta!r}; correct it, or give the segments' descriptions."
        )
    entries = meta.get(key, [])
    if not isinstance(entries, list) or not all(isinstance(e, dict) for e in entries):
        raise SegmentationInputError(
            f"The image-label {key!r} of {where} is not a list of objects: {entries!r}; "
            "correct it, or give the segments' descriptions."
        )
    found = {}
    for entry in entries:
        if "label-value" not in entry:
            continue
        value = entry["label-value"]
        # JSON has one number type: 2.0 is the integer 2, 2.5 no label.
        if isinstance(value, bool) or not (isinstance(value, int) or (
                isinstance(value, float) and value.is_integer())):
            raise SegmentationInputError(
                f"A label-value of the image-label {key!r} of {where} is {value!r}, not an "
                "integer (NGFF: image-label); correct it, or give the segments' descriptions."
            )
        found[int(value)] = entry
    return found


def _ome_zarr_segment(
    segment_number: int, number: int, props: dict[str, Any], rgba: Any, default: Dataset,
) -> hd.seg.SegmentDescription:
    """The description of label ``number`` from its ``properties`` entry and ``colors`` rgba."""
    algorithm_type = str(props.get("segment-algorithm-type", "MANUAL")).upper()
    allowed = [value.name for value in hd.seg.SegmentAlgorithmTypeValues]
    if algorithm_type not in allowed:
        raise ValueError(f"segment-algorithm-type {props['segment-algorithm-type']!r} is none "
                         f"of {', '.join(allowed)} (PS3.3 C.8.20.2)")
    algorithm = None
    if algorithm_type != "MANUAL":
        algorithm = hd.AlgorithmIdentificationSequence(
            name=str(props.get("segment-algorithm-name", "unknown")),
            version=str(props.get("segment-algorithm-version", "unknown")),
            family=_concept(props.get("segment-algorithm-family"),
                            codes.cid7162.ArtificialIntelligence),
        )
    display = None
    if rgba:
        if not isinstance(rgba, (list, tuple)) or len(rgba) not in (3, 4):
            raise ValueError(f"rgba {rgba!r} is not 3 or 4 values of 0..255")
        display = hd.color.CIELabColor.from_rgb(*rgba[:3])
    elif "RecommendedDisplayCIELabValue" in default:
        display = hd.color.CIELabColor.from_dicom_value(default.RecommendedDisplayCIELabValue)
    description = hd.seg.SegmentDescription(
        segment_number=segment_number,
        segment_label=str(props.get("segment-label", f"Segment {number}")),
        segmented_property_category=_concept(props.get("segmented-property-category"),
                                             codes.SCT.Tissue),
        segmented_property_type=_concept(props.get("segmented-property-type"), codes.SCT.Tissue),
        algorithm_type=hd.seg.SegmentAlgorithmTypeValues[algorithm_type],
        algorithm_identification=algorithm,
        display_color=display,
        tracking_id=_text(props.get("tracking-id")),
        tracking_uid=_text(props.get("tracking-uid")),
        anatomic_regions=_concepts(props.get("anatomic-regions")),
        primary_anatomic_structures=_concepts(props.get("primary-anatomic-structures")),
    )
    if props.get("segment-description"):
        description.SegmentDescription = str(props["segment-description"])
    _add_modifiers(description, props)
    return description


def _add_modifiers(description: Dataset, props: dict[str, Any]) -> None:
    """The modifiers :func:`_code` wrote, back on the description's coded items."""
    for key, sequence in (("segmented-property-type", "SegmentedPropertyTypeCodeSequence"),
                          ("anatomic-regions", "AnatomicRegionSequence"),
                          ("primary-anatomic-structures", "PrimaryAnatomicStructureSequence")):
        written = props.get(key)
        written = written if isinstance(written, list) else [written]
        for item, code in zip(description.get(sequence) or [], written):
            modifiers = _concepts(code.get("modifiers")) if isinstance(code, dict) else None
            if modifiers:
                setattr(item, _MODIFIERS[sequence], modifiers)


def _text(value: Any) -> str | None:
    return None if value is None else str(value)


def _concepts(values: Any) -> list[CodedConcept] | None:
    """Coded concepts as :func:`_image_label` writes them; None when absent or not such."""
    if not isinstance(values, list):
        return None
    concepts = [CodedConcept(value["code-value"], value["coding-scheme-designator"],
                             value["code-meaning"])
                for value in values if isinstance(value, dict)
                and {"code-value", "coding-scheme-designator", "code-meaning"} <= set(value)]
    return concepts or None

