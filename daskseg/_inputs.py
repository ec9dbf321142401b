"""The writer's inputs: the mask of any kind as a Dask array, the leading-axis rule, tile size,
segment numbers, the destination and the options, each checked before any work is sent.

Validators take what the user gave and return the checked value (zarr-python's ``parse_*``
habit); :func:`parse_options` gathers them in a frozen :class:`WriteOptions`. Each kind of mask
is one branch of :func:`as_dask_array`, so a new kind (NIfTI, OME-Zarr) is one more branch.
"""

from __future__ import annotations

import contextlib
import enum
import functools
import numbers
import os
import pathlib
import re
import stat
import uuid
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypeGuard, Union

import dask.array as da
import highdicom as hd
import numpy as np
from pydicom.dataset import Dataset
from pydicom.uid import UID

from daskseg._codecs import ALLOWED_TRANSFER_SYNTAXES, CODECS
from daskseg.errors import DestinationExistsError, SegmentationInputError, SegmentationTypeError

if TYPE_CHECKING:
    import zarr

__all__ = [
    "MaskLike",
    "WriteOptions",
    "as_dask_array",
    "check_flags",
    "in_blocks",
    "worker_visible",
    "is_uid_form",
    "check_destination",
    "check_person_name",
    "check_store_folder",
    "check_mask_dtype",
    "drop_leading_axis",
    "normalize_mask",
    "one_segment_plane",
    "parse_options",
    "segment_numbers",
    "tile_size",
]

#: What ``write_segmentation`` takes as a mask.
MaskLike = Union[da.Array, "zarr.Array", "zarr.Group", np.ndarray, str, os.PathLike]


def _enum_value(value: Any) -> Any:
    """A highdicom enum member (``SegmentationTypeValues.BINARY``) as its value, as highdicom does."""
    return value.value if isinstance(value, enum.Enum) else value


@dataclass(frozen=True)
class WriteOptions:
    """The checked options of one SEG that do not depend on the mask or the source."""

    segmentation_type: str  # "BINARY", "FRACTIONAL" or "LABELMAP"
    transfer_syntax_uid: UID
    # "TILED_SPARSE" or "TILED_FULL" for a tiled image; None (inferred) or "3D" for a volume
    dimension_organization_type: str | None
    omit_empty_frames: bool
    max_fractional_value: int
    use_extended_offset_table: bool | None
    series_description: str | None = None  # highdicom takes none; set on its header
    # Further attributes of the header, (keyword, value) pairs (see parse_header_attributes)
    header_attributes: tuple[tuple[str, Any], ...] = ()
    # The value of each segment in a label mask, when not its number (BINARY, FRACTIONAL)
    label_values: tuple[int, ...] = ()

    @property
    def tiled_full(self) -> bool:
        return self.dimension_organization_type == "TILED_FULL"


# Groups no caller may set, which the writer makes: file meta (PS3.10 7.1), the image pixel
# and segmentation attributes (PS3.3 C.7.6.3, C.8.20.2), the functional groups and pixel data.
_RESERVED_GROUPS = (0x0002, 0x0028, 0x0062, 0x5200, 0x7FE0)
# Groups of no dataset stored as a file: command (PS3.7 E.1), directory records (PS3.10),
# padding and item delimitation (PS3.5 7.5).
_NOT_STORED_GROUPS = (0x0000, 0x0004, 0xFFFC, 0xFFFE)


def _value_count(value: Any, vr: str) -> int:
    if isinstance(value, tuple):
        return len(value)
    if isinstance(value, str) and vr in _STRING_VRS and vr not in ("LT", "ST", "UT", "UR"):
        return value.count("\\") + 1  # a backslash separates values (PS3.5 6.4)
    return 1


def _vm_allows(vm: str, count: int) -> bool:
    """Whether the value multiplicity ``vm`` of the data dictionary ("1", "1-3", "2-2n",
    "1-n") allows ``count`` values."""
    low, _, high = vm.partition("-")
    if not high:
        return count == int(low)
    if high.endswith("n"):
        step = int(high[:-1] or 1)
        return count >= int(low) and count % step == 0
    return int(low) <= count <= int(high)


def parse_header_attributes(attributes: Any) -> tuple[tuple[str, Any], ...]:
    """``header_attributes`` checked: a mapping of DICOM keywords to values valid for their
    VR (PS3.5 6.2), none a sequence or of a group the writer makes, each of a module of a
    SEG's header that the writer does not make."""
    import pydicom
    from pydicom.datadict import dictionary_VM, dictionary_VR, tag_for_keyword

    if attributes is None:
        return ()
    if not isinstance(attributes, Mapping):
        raise SegmentationTypeError(
            "header_attributes is a mapping of DICOM keywords to values, e.g. "
            f"{{'BodyPartExamined': 'ABDOMEN'}}, not {type(attributes).__name__}."
        )
    checked = []
    for keyword, value in attributes.items():
        tag = tag_for_keyword(str(keyword))
        if tag is None:
            raise SegmentationInputError(f"header_attributes: {keyword!r} is not a DICOM keyword.")
        if keyword == "DimensionOrganizationType":
            # Set by the writer from the frames written (a series' after its last block).
            raise SegmentationInputError(
                "header_attributes: DimensionOrganizationType cannot be given; use the "
                "dimension_organization_type option."
            )
        vr = dictionary_VR(tag)
        if (tag >> 16) in _NOT_STORED_GROUPS:
            raise SegmentationInputError(
                f"header_attributes: {keyword} is no attribute of a stored dataset (a "
                "command, directory record, padding or item element; PS3.5, PS3.7, PS3.10)."
            )
        if vr == "SQ" or (tag >> 16) in _RESERVED_GROUPS:
            raise SegmentationInputError(
                f"header_attributes: {keyword} cannot be given; sequences, and the attributes "
                "of the SEG's image, frames and pixel data, are made by the writer."
            )
        if isinstance(value, list):
            value = tuple(value)
        try:
            pydicom.DataElement(tag, vr, list(value) if isinstance(value, tuple) else value,
                                validation_mode=pydicom.config.RAISE)
        except (ValueError, TypeError) as error:
            raise SegmentationInputError(f"header_attributes: {keyword}: {error}") from None
        vm, count = dictionary_VM(tag), _value_count(value, vr)
        if not _vm_allows(vm, count):
            raise SegmentationInputError(
                f"header_attributes: {keyword} takes {vm} value(s) (PS3.6), not {count}: "
                f"{value!r}" + (" (a backslash separates values)." if isinstance(value, str)
                                else ".")
            )
        if keyword == "SpecificCharacterSet":
            from pydicom.charset import python_encoding

            terms = value if isinstance(value, tuple) else str(value).split("\\")
            unknown = [term for term in terms if term not in python_encoding]
            if unknown:
                raise SegmentationInputError(
                    f"header_attributes: SpecificCharacterSet {unknown[0]!r} is not a defined "
                    "term (PS3.3 C.12.1.1.2), such as 'ISO_IR 100' or 'ISO_IR 192' (UTF-8)."
                )
        checked.append((str(keyword), value))
    if checked:
        # Before any work: highdicom's module tables (0.26 s to load) only when needed.
        from daskseg._header import check_header_keywords

        check_header_keywords([keyword for keyword, _ in checked])
    return tuple(checked)


def parse_segmentation_type(value: str | enum.Enum) -> str:
    """``segmentation_type`` as a string; highdicom's ``SegmentationTypeValues`` too."""
    segmentation_type = str(_enum_value(value)).upper()
    if segmentation_type not in ALLOWED_TRANSFER_SYNTAXES:
        raise SegmentationInputError(
            f"Unknown segmentation_type {segmentation_type!r}; use one of "
            f"{', '.join(ALLOWED_TRANSFER_SYNTAXES)}."
        )
    return segmentation_type


_UID_FORM = re.compile(r"[0-9]+(\.[0-9]+)*")


def is_uid_form(value: str) -> bool:
    """Whether ``value`` has the form of a UID, digits separated by dots (PS3.5 9.1), rather
    than a name ("jpeg2000") or the garbage of a file read by force."""
    return _UID_FORM.fullmatch(value) is not None


def parse_transfer_syntax(value: str, segmentation_type: str) -> UID:
    """A transfer syntax the codec table has for the segmentation type."""
    allowed = ALLOWED_TRANSFER_SYNTAXES[segmentation_type]
    if not is_uid_form(str(value)):
        raise SegmentationInputError(
            f"transfer_syntax_uid {value!r} is not a UID. Allowed for a {segmentation_type} "
            "SEG: " + ", ".join(f"{uid} ({uid.name})" for uid in allowed)
        )
    transfer_syntax_uid = UID(str(value))
    if transfer_syntax_uid not in allowed:
        lossy = " It is lossy: a SEG must be stored losslessly." if (
            transfer_syntax_uid.is_transfer_syntax and transfer_syntax_uid.is_compressed
            and not transfer_syntax_uid.info.endswith("Lossless")
            and "Lossless" not in transfer_syntax_uid.name
        ) else ""
        raise SegmentationInputError(
            f"Transfer syntax {transfer_syntax_uid} ({transfer_syntax_uid.name}) is not "
            f"allowed for a {segmentation_type} SEG.{lossy} Use one of: "
            + ", ".join(f"{uid} ({uid.name})" for uid in allowed)
        )
    return transfer_syntax_uid


def parse_options(
    segmentation_type: str | enum.Enum,
    transfer_syntax_uid: str,
    dimension_organization_type: str | enum.Enum | None,
    omit_empty_frames: bool | None,
    max_fractional_value: int,
    use_extended_offset_table: bool | None,
    volume: bool = False,
) -> WriteOptions:
    """Check the options of ``write_segmentation`` that stand on their own.

    ``volume``: the SEG of a series or multi-frame image, whose organization is None (inferred
    from the planes, as highdicom) or "3D"; a tiled image's is TILED_SPARSE by default.
    """
    check_flags(omit_empty_frames=omit_empty_frames,
                use_extended_offset_table=use_extended_offset_table)
    kind = parse_segmentation_type(segmentation_type)
    syntax = parse_transfer_syntax(transfer_syntax_uid, kind)
    if isinstance(max_fractional_value, bool) or not isinstance(
        max_fractional_value, (int, np.integer)
    ):
        # 2.5 was cut to 2 for the pixels and then failed the file's US element at the end.
        raise SegmentationTypeError(
            f"max_fractional_value must be an integer, not {max_fractional_value!r}."
        )
    if kind == "FRACTIONAL" and not 1 <= int(max_fractional_value) <= 255:
        raise SegmentationInputError(
            f"max_fractional_value must be in 1..255, got {max_fractional_value}."
        )
    if volume:
        given = _enum_value(dimension_organization_type)
        if given is not None and str(given).upper() != "3D":
            raise SegmentationInputError(
                f"dimension_organization_type {dimension_organization_type!r} is for tiled "
                "images; a SEG of a series takes None (inferred, as highdicom) or '3D'."
            )
        return WriteOptions(kind, syntax, None if given is None else "3D",
                            True if omit_empty_frames is None else bool(omit_empty_frames),
                            int(max_fractional_value), use_extended_offset_table)
    organization = str(_enum_value(dimension_organization_type) or "TILED_SPARSE").upper()
    if organization not in ("TILED_SPARSE", "TILED_FULL"):
        raise SegmentationInputError(
            f"dimension_organization_type must be 'TILED_SPARSE' or 'TILED_FULL', "
            f"got {dimension_organization_type!r}."
        )
    tiled_full = organization == "TILED_FULL"
    if omit_empty_frames is None:
        omit_empty_frames = not tiled_full
    if tiled_full and omit_empty_frames:
        raise SegmentationInputError(
            "A TILED_FULL SEG holds every frame: omit_empty_frames must be False (or None)."
        )
    return WriteOptions(kind, syntax, organization, bool(omit_empty_frames),
                        int(max_fractional_value), use_extended_offset_table)


def check_tile_for_codec(tile: tuple[int, int], transfer_syntax_uid: UID) -> None:
    """Raise if the codec cannot encode frames of this size."""
    codec = CODECS[transfer_syntax_uid]
    if min(tile) < codec.min_tile:
        raise SegmentationInputError(
            f"{transfer_syntax_uid.name} cannot encode frames smaller than {codec.min_tile} x "
            f"{codec.min_tile} pixels (tile_size {tile}); use a larger tile_size or a native "
            "transfer syntax."
        )


def as_dask_array(mask: MaskLike) -> da.Array:
    """Wrap any supported mask as a Dask array without reading it: one branch per kind."""
    import zarr

    if isinstance(mask, da.Array):
        if any(np.isnan(length) for length in mask.shape):
            raise SegmentationInputError(
                f"The mask's shape {mask.shape} is not known (chunk sizes unknown, as after "
                "boolean indexing); call mask.compute_chunk_sizes() first."
            )
        return mask
    if isinstance(mask, np.ndarray):
        # Named, not tokenized: hashing a large mask would read all of it on the client.
        return da.from_array(mask, chunks=mask.shape, name=f"numpy-mask-{uuid.uuid4().hex}")
    mask = worker_visible(mask)
    if isinstance(mask, (str, os.PathLike)):
        from daskseg._nifti import is_nifti_path
        from daskseg._nrrd import is_nrrd_path

        if is_nifti_path(mask) or is_nrrd_path(mask):
            raise SegmentationInputError(
                f"{os.fspath(mask)} is a NIfTI or NRRD file: such a mask is of a series (CT, "
                "MR...), given as source_images (a folder, files or Datasets); a slide's mask is "
                "a Zarr array or path, a dask or numpy array."
            )
    if isinstance(mask, (str, os.PathLike, zarr.Group)):
        from daskseg.omezarr import _ome_label_mask

        # An OME-Zarr image or label image (napari, ome-zarr-py): its label image's level 0.
        labels = _ome_label_mask(mask)
        if labels is not None:
            return labels
    if isinstance(mask, (str, os.PathLike)):
        return da.from_zarr(_open_zarr_array(mask))
    if isinstance(mask, zarr.Array):
        return da.from_zarr(mask)
    raise SegmentationTypeError(
        "mask must be a dask array, a zarr array, the path or URL of a Zarr array or of an "
        f"OME-Zarr label image, or a numpy array, not {type(mask).__name__}."
    )


def in_blocks(mask: Any, array: da.Array, chunks: tuple[Any, ...]) -> da.Array:
    """``array``, the dask array :func:`as_dask_array` made of ``mask``, in ``chunks``.

    A Zarr array (or its path) that reached ``array`` unchanged is read in those blocks
    directly, one read of several chunks per block. A rechunk would read each Zarr chunk in a
    task of its own and join them in another: for 512-pixel chunks of a 16384² mask, a graph of
    1,041 tasks instead of 17, and each 4096² block took 80 ms to read instead of 42-62 ms.
    """
    import zarr

    mask = worker_visible(mask)
    backing = None
    if isinstance(mask, zarr.Array):
        backing = mask
    elif isinstance(mask, (str, os.PathLike)) and array.name.startswith("from-zarr-"):
        opened = zarr.open(str(mask), mode="r")  # a group: an OME-Zarr image's label image
        backing = opened if isinstance(opened, zarr.Array) else None
    # The same name: the same array, neither reshaped nor reordered on the way.
    if backing is not None and da.from_zarr(backing).name == array.name:
        return da.from_zarr(backing, chunks=chunks)
    return array.rechunk(chunks)


_ZARR_METADATA = ("zarr.json", ".zarray", ".zgroup")


def _holds_zarr_metadata(folder: pathlib.Path) -> bool:
    return any((folder / name).is_file() for name in _ZARR_METADATA)


def local_zarr_folders(mask: Any) -> list[pathlib.Path]:
    """The folders of the Zarr stores on local disk that ``mask`` reads, where they hold Zarr
    metadata now: a path, an array or group of a local store, or the Zarr arrays a Dask array
    was made from (``da.from_zarr``: a local file system's FsspecStore or a LocalStore)."""
    from daskseg._frames import local_path

    if isinstance(mask, (str, os.PathLike)):
        local = local_path(os.fspath(mask))
        folders = [pathlib.Path(local)] if local is not None else []
    elif isinstance(mask, da.Array):
        folders = [folder for array in _zarr_arrays_read_by(mask)
                   if (folder := _store_folder(array)) is not None]
    else:
        folder = _store_folder(mask)
        folders = [folder] if folder is not None else []
    return [folder for folder in dict.fromkeys(folders) if _holds_zarr_metadata(folder)]


def _store_folder(array: Any) -> pathlib.Path | None:
    """The folder of a Zarr array or group on local disk, else None."""
    import zarr

    if not isinstance(array, (zarr.Array, zarr.Group)):
        return None
    store = array.store
    if isinstance(store, zarr.storage.LocalStore):
        root = pathlib.Path(store.root)
    elif isinstance(store, zarr.storage.FsspecStore):
        # da.from_zarr of a path opens it through fsspec's local file system.
        protocol = getattr(store.fs, "protocol", ())
        if "file" not in ((protocol,) if isinstance(protocol, str) else tuple(protocol)):
            return None
        root = pathlib.Path(store.path)
    else:
        return None
    return root.absolute() / array.path


def _zarr_arrays_read_by(array: da.Array) -> list[Any]:
    """The Zarr arrays held as data in ``array``'s graph, as ``da.from_array`` keeps the array
    it reads: in a layer of its own, or (``inline_array=True``) an argument of its blockwise
    layer, found there without making its tasks."""
    import zarr
    from dask.blockwise import Blockwise
    from dask.highlevelgraph import MaterializedLayer

    found = []
    for layer in array.__dask_graph__().layers.values():
        if isinstance(layer, Blockwise):
            values: Any = [value for value, index in layer.indices if index is None]
        elif isinstance(layer, MaterializedLayer):
            values = layer.values()
        else:
            continue
        for value in values:
            value = getattr(value, "value", value)  # a DataNode holds it in newer Dask
            if isinstance(value, zarr.Array):
                found.append(value)
    return found


def check_zarr_folders_kept(folders: Sequence[pathlib.Path]) -> None:
    """Refuse to write a SEG of a Zarr mask whose folder lost its metadata during the write
    (removed, or replaced): the workers read its missing chunks as the fill value, and a
    SEG empty or in part was written without a word."""
    for folder in folders:
        if not _holds_zarr_metadata(folder):
            raise SegmentationInputError(
                f"The Zarr mask {folder} was removed while the SEG was made from it: its "
                "chunks that were gone read as the fill value. Nothing was written; write it "
                "again once the mask is in place."
            )


def worker_visible(mask: Any) -> Any:
    """``mask`` as worker processes can open it too: a Zarr store on local disk by its absolute
    path (a relative one is relative to each worker's own working directory, where Zarr
    found no chunks and read the fill value: an empty SEG without an error), and fsspec's
    ``memory://`` file system, which is this process's memory, copied into a
    ``zarr.storage.MemoryStore``, which travels with the tasks. Anything else as it is, so
    that what it gave comes back unchanged, not copied again."""
    if isinstance(mask, (str, os.PathLike)):
        text = os.fspath(mask)
        if text.startswith("memory://"):
            import zarr

            try:
                node = zarr.open(text, mode="r")
            except Exception as error:  # zarr raises several types for a missing store
                raise SegmentationInputError(
                    f"Could not open the mask {text!r} as Zarr: {str(error).rstrip('.')}."
                ) from error
            return worker_visible(node)
        from daskseg._frames import local_path

        return local_path(text) or mask
    import zarr

    if not isinstance(mask, (zarr.Array, zarr.Group)):
        return mask
    store = mask.store
    absolute = absolute_local_store(store)
    if absolute is not store:
        return zarr.open(absolute.with_read_only(True), path=mask.path, mode="r")
    if in_fsspec_memory(store):
        import posixpath

        import fsspec
        from zarr.core.buffer import Buffer, cpu

        files = fsspec.filesystem("memory")  # one per process: the store's own
        root = store.path.rstrip("/")
        contents: dict[str, Buffer] = {
            posixpath.relpath(name, root): cpu.Buffer.from_bytes(files.cat_file(name))
            for name in files.find(root)
        }
        return zarr.open(zarr.storage.MemoryStore(contents), path=mask.path, mode="r")
    return mask


def absolute_local_store(store: Any) -> Any:
    """``store``, a zarr LocalStore of a relative folder by its absolute path (workers
    started elsewhere resolve a relative one against their own folder); else as it is."""
    import zarr.storage

    if isinstance(store, zarr.storage.LocalStore) and not store.root.is_absolute():
        return zarr.storage.LocalStore(store.root.absolute(), read_only=store.read_only)
    return store


def in_fsspec_memory(store: Any) -> TypeGuard[zarr.storage.FsspecStore]:
    """Whether ``store`` is on fsspec's ``memory://`` file system: this process's memory,
    which each worker process has a copy of its own of."""
    import zarr.storage

    if not isinstance(store, zarr.storage.FsspecStore):
        return False
    protocol = getattr(store.fs, "protocol", ())
    return "memory" in ((protocol,) if isinstance(protocol, str) else tuple(protocol))


def _open_zarr_array(path: str | os.PathLike) -> zarr.Array:
    import zarr

    try:
        return zarr.open_array(str(path), mode="r")
    except Exception as error:  # zarr raises several types for a missing or bad store
        hint = ""
        with contextlib.suppress(Exception):  # a group: name the arrays it holds
            names = sorted(zarr.open_group(str(path), mode="r").array_keys())
            hint = (f" It is a Zarr group; give the path of one of its arrays: "
                    f"{', '.join(names) or '(it holds none)'}.")
        raise SegmentationInputError(
            f"Could not open the mask {str(path)!r} as a Zarr array: "
            f"{str(error).rstrip('.')}.{hint}"
        ) from error


# PS3.5 6.1.2.3 and 6.2: no control character but ESC in a short text (LO, SH, CS, PN, UC);
# a long one (ST, LT, UT) may also hold TAB, LF, FF and CR.
_SHORT_TEXT_VRS = frozenset({"CS", "LO", "PN", "SH", "UC"})
_LONG_TEXT_VRS = frozenset({"LT", "ST", "UT"})


def text_problem(vr: str, value: Any) -> str | None:
    """What makes ``value`` unfit for one value of the VR ``vr`` (PS3.5 6.2), or None."""
    if isinstance(value, str):
        return _str_problem(vr, value)
    return _value_problem(vr, value)


@functools.lru_cache(maxsize=4096)
def _str_problem(vr: str, value: str) -> str | None:
    # Cached: a SEG's segments repeat most of their texts (coding schemes, categories).
    return _value_problem(vr, value)


def _value_problem(vr: str, value: Any) -> str | None:
    from pydicom import config
    from pydicom.valuerep import validate_value

    if vr in _SHORT_TEXT_VRS | _LONG_TEXT_VRS:
        allowed = {"\x1b"} | ({"\t", "\n", "\x0c", "\r"} if vr in _LONG_TEXT_VRS else set())
        if any((c < " " or c == "\x7f") and c not in allowed for c in str(value)):
            return "it holds a control character"
    try:
        validate_value(vr, value, config.RAISE)
    except ValueError as error:
        return str(error).rstrip(".")
    return None


# The VRs of strings, whose values pydicom takes as given and writes as they are.
_STRING_VRS = frozenset({"AE", "AS", "CS", "DA", "DS", "DT", "IS", "LO", "LT", "PN", "SH", "ST",
                         "TM", "UC", "UI", "UR", "UT"})


def _elements(dataset: Dataset) -> Iterator[Any]:
    """Every data element of ``dataset`` and of its sequences' items, in no order (pydicom's
    ``iterall`` sorts each dataset's tags: most of the time of a check of 117 segments)."""
    for tag in list(dataset.keys()):
        element = dataset[tag]
        yield element
        if element.VR == "SQ" and element.value:
            for item in element.value:
                yield from _elements(item)


def check_texts(dataset: Dataset, whose: str) -> None:
    """Raise unless every string value of ``dataset`` (its sequences' items too) fits its VR
    and the number of values its attribute takes: highdicom leaves that to pydicom, which warns
    and writes a SegmentLabel of 80 characters, or of two values where a backslash was."""
    from pydicom.datadict import dictionary_VM
    from pydicom.multival import MultiValue

    for element in _elements(dataset):
        if element.VR not in _STRING_VRS or element.value is None or element.tag.is_private:
            continue
        value = element.value
        values = value if isinstance(value, MultiValue) else (value,)
        if len(values) > 1:
            with contextlib.suppress(KeyError):
                if dictionary_VM(element.tag) == "1":
                    text = "\\".join(map(str, values))
                    name = element.keyword or str(element.tag)
                    raise SegmentationInputError(
                        f"{whose} {name} holds {len(values)} values (a backslash separates "
                        f"values), where it takes one: {text!r}; remove the backslash."
                    )
        for one in values:
            if one in ("", None):
                continue
            problem = text_problem(element.VR, one)
            if problem is not None:
                name = element.keyword or str(element.tag)
                raise SegmentationInputError(
                    f"{whose} {name} cannot be written as {element.VR} (PS3.5 6.2): {problem}: "
                    f"{str(one)!r}; shorten or correct it."
                )


def segment_numbers(segment_descriptions: Sequence[hd.seg.SegmentDescription],
                    segmentation_type: str = "BINARY") -> list[int]:
    """The segment numbers of the descriptions, checked as highdicom checks them: 1..n in
    order, or for a LABELMAP any ascending numbers in 1..65535 (its pixels hold them)."""
    if isinstance(segment_descriptions, (str, bytes)) or not isinstance(
        segment_descriptions, Sequence
    ):
        raise SegmentationTypeError(
            "segment_descriptions must be a sequence of highdicom SegmentDescription objects."
        )
    if len(segment_descriptions) == 0:
        raise SegmentationInputError(
            "No segment descriptions were given; describe each segment of the mask with a "
            "highdicom.seg.SegmentDescription."
        )
    for item in segment_descriptions:
        if not isinstance(item, hd.seg.SegmentDescription):
            raise SegmentationTypeError(
                "Each segment description must be a highdicom.seg.SegmentDescription, "
                f"not {type(item).__name__}."
            )
    numbers = [int(item.SegmentNumber) for item in segment_descriptions]
    for number, item in zip(numbers, segment_descriptions):
        check_texts(item, f"Segment {number}'s")
    if segmentation_type == "LABELMAP":
        if numbers[0] < 1 or numbers[-1] > 65535 or any(
            a >= b for a, b in zip(numbers, numbers[1:])
        ):
            raise SegmentationInputError(
                "The segment numbers of a LABELMAP must be ascending, without repeats, in "
                f"1..65535 (0 is the background), got {numbers}."
            )
    elif numbers != list(range(1, len(numbers) + 1)):
        raise SegmentationInputError(
            f"Segment numbers must run 1..{len(numbers)} in order, got {numbers} (a "
            "LABELMAP's may skip numbers; for a label mask whose values skip, number the "
            "segments 1..n and give its values as label_values)."
        )
    return numbers


def parse_label_values(label_values: Sequence[int] | None, numbers: Sequence[int],
                       segmentation_type: str) -> tuple[int, ...]:
    """``label_values`` checked: one positive integer per segment, none repeated; empty when
    not given or when each segment's value is its number."""
    if label_values is None:
        return ()
    if segmentation_type == "LABELMAP":
        raise SegmentationInputError(
            "label_values is for BINARY and FRACTIONAL SEGs; a LABELMAP stores the mask's "
            "values as its segment numbers: number the segment descriptions by them instead."
        )
    if isinstance(label_values, np.ndarray) and label_values.ndim == 1:
        label_values = label_values.tolist()  # np.unique(mask)[1:], say
    if isinstance(label_values, (str, bytes)) or not isinstance(label_values, Sequence) or any(
        isinstance(v, bool) or not isinstance(v, (int, np.integer)) for v in label_values
    ):
        raise SegmentationTypeError(
            f"label_values must be a sequence of integers, one per segment, not {label_values!r}."
        )
    values = tuple(int(v) for v in label_values)
    if len(values) != len(numbers) or min(values) < 1 or len(set(values)) != len(values):
        raise SegmentationInputError(
            f"label_values must give each of the {len(numbers)} segments its own value in the "
            f"label mask (1 or more; 0 is the background), got {list(values)}."
        )
    return () if values == tuple(numbers) else values


def check_label_values_mask(options: WriteOptions, stacked: bool, dtype: np.dtype) -> None:
    """``label_values`` say which value of an integer label mask each segment is: a boolean
    or floating-point mask, or a stack of planes, has none."""
    if not options.label_values:
        return
    what = ("boolean, one segment's plane (True is the segment)" if dtype.kind == "b" else
            "floating point, one segment's fractions" if dtype.kind == "f" else
            "a stack of one plane per segment" if stacked else None)
    if what is not None:
        advice = (" Save the mask with an integer type to give labels, or number the segment "
                  "1 (its values are then its fractions)." if dtype.kind == "f" else "")
        raise SegmentationInputError(
            "label_values (in daskseg encode, the metadata's labelIDs other than 1..n) is for a "
            f"mask of integer labels; this mask is {what}.{advice}"
        )


# The most a temporary file's name beside the destination adds to the destination's name: a
# worker's spool, ".{name}.{16 hex}.{its address}.spool" (an IPv6 address is up to 45 characters).
_TEMPORARY_NAME_EXTRA = 80


def check_flags(**flags: Any) -> None:
    """Refuse an option meant as True or False (None where it means "the default") given as
    anything else: ``omit_empty_frames="no"`` was true, and omitted the empty frames."""
    for name, value in flags.items():
        if value is not None and not isinstance(value, (bool, np.bool_)):
            raise SegmentationTypeError(f"{name} is True or False, not {value!r}.")


# A UID (PS3.5 9.1): numeric components without leading zeros, separated by dots.
VALID_UID = re.compile(r"(0|[1-9][0-9]*)(\.(0|[1-9][0-9]*))*")


def check_numbers(**numbers: Any) -> None:
    """Refuse a series or instance number that is not a whole number from 1 (as highdicom
    takes them) up to 2**31 - 1, the largest an IS value holds (PS3.5 6.2)."""
    for name, value in numbers.items():
        if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, np.integer)):
            raise SegmentationTypeError(f"{name} is a whole number, not {value!r}.")
        if not 1 <= value <= 2**31 - 1:
            raise SegmentationInputError(
                f"{name} {value} is out of range: 1 to 2147483647 (IS, PS3.5 6.2)."
            )


def check_software_versions(software_versions: Any) -> None:
    """Refuse a ``software_versions`` (None: daskseg's version) that is not a text or a
    sequence of texts, or names no version: Type 1 in the Enhanced General Equipment module
    (PS3.3 C.7.5.2); highdicom wrote it empty, which validators refuse, and empty was taken as
    not given and became daskseg's."""
    if software_versions is None:
        return
    if not isinstance(software_versions, (str, Sequence)) or isinstance(
            software_versions, (bytes, bytearray)):
        raise SegmentationTypeError(
            f"software_versions is a text or a sequence of texts, not {software_versions!r}."
        )
    versions = [software_versions] if isinstance(software_versions, str) else software_versions
    if not any(str(version).strip() for version in versions):
        raise SegmentationInputError(
            f"software_versions {software_versions!r} is empty: the SEG must name the versions "
            "of the software that made it (PS3.3 C.7.5.2, Type 1); give one, or leave it out "
            "for daskseg's."
        )


def check_uids(**uids: Any) -> None:
    """Refuse a UID option (None: made by the writer) that is not a valid UID (PS3.5 9.1):
    pydicom writes one with a warning, and validators fail the file."""
    for name, value in uids.items():
        if value is None:
            continue
        if not isinstance(value, str):
            raise SegmentationTypeError(f"{name} is a UID string, not {type(value).__name__}.")
        if len(value) > 64 or not VALID_UID.fullmatch(value):
            raise SegmentationInputError(
                f"{name} {value!r} is not a valid UID: numbers without leading zeros separated "
                "by dots, at most 64 characters (PS3.5 9.1); leave it out for a new one."
            )


def check_person_name(value: Any, name: str) -> None:
    """Refuse ``value`` unless it is one person name (PN, PS3.5 6.2): up to three component
    groups (=) of up to five components (^), each of at most 64 characters; pydicom only
    warns, and writes what a validator then calls invalid."""
    text = str(value)
    problem = text_problem("PN", text)
    if problem is None and "\\" in text:
        problem = "a backslash separates values, and it takes one"
    if problem is None and (text.count("=") > 2 or any(g.count("^") > 4 for g in text.split("="))):
        problem = "a person name has at most five components (family^given^middle^prefix^suffix)"
    if problem is not None:
        raise SegmentationInputError(
            f"{name} {text!r} is not a person name (PN, PS3.5 6.2): {problem}."
        )


def check_store_folder(destination: pathlib.Path) -> None:
    """Refuse a local Zarr store whose folder does not exist: Zarr makes the folders on the way,
    and a write that then failed left them behind."""
    if not destination.parent.is_dir():
        raise SegmentationInputError(
            f"The destination folder {destination.parent} does not exist (or is not a folder); "
            "create it first."
        )
    if (special := not_a_regular_file(destination)) is not None:
        raise special


def not_a_regular_file(path: pathlib.Path) -> SegmentationInputError | None:
    """The refusal of a destination that exists as something other than a file (or a link to
    one): a device, a FIFO, a socket, which the rename onto it would replace with a file (run
    as root, /dev/null)."""
    try:
        mode = path.stat().st_mode
    except OSError:  # absent, or a link to nowhere: a file takes its place
        return None
    if stat.S_ISREG(mode) or stat.S_ISDIR(mode):  # a folder is refused as one
        return None
    kind = ("character device" if stat.S_ISCHR(mode) else "block device" if stat.S_ISBLK(mode)
            else "FIFO" if stat.S_ISFIFO(mode) else "socket" if stat.S_ISSOCK(mode)
            else "special file")
    return SegmentationInputError(
        f"The destination {path} is a {kind}, not a file: the output is written beside it and "
        f"renamed onto it, which would replace the {kind}; give another name."
    )


def check_destination(path: str | os.PathLike, overwrite: bool) -> pathlib.Path:
    """The destination as a path whose folder exists and which may be written.

    The file is written beside itself under temporary names and renamed onto its path at the
    end, so those names must fit the folder too, and the folder must take new files.
    """
    if not isinstance(path, (str, os.PathLike)):
        raise SegmentationTypeError(
            f"The destination is a file's path, as a str or pathlib.Path, not "
            f"{type(path).__name__}."
        )
    text = os.fsdecode(path)
    # pathlib drops a trailing separator: "out/new/" would be written as a file named "new".
    if text.endswith((os.sep, os.altsep or os.sep)):
        raise SegmentationInputError(
            f"The destination {text} names a folder; give a file name (a SEG is one file)."
        )
    path = pathlib.Path(path)
    if not path.parent.is_dir():
        raise SegmentationInputError(
            f"The destination folder {path.parent} does not exist; create it first."
        )
    if path.is_dir():
        raise SegmentationInputError(f"The destination {path} is a folder; give a file name.")
    if (special := not_a_regular_file(path)) is not None:
        raise special
    # A symbolic link to nowhere exists too: the file would replace it.
    if os.path.lexists(path) and not overwrite:
        raise DestinationExistsError(
            f"{path} exists; pass overwrite=True to replace it."
        )
    if not os.access(path.parent, os.W_OK | os.X_OK):
        raise SegmentationInputError(
            f"The destination folder {path.parent} does not let this user create files; "
            "choose a folder that does."
        )
    try:
        name_max = os.pathconf(path.parent, "PC_NAME_MAX")
    except (OSError, ValueError, AttributeError):  # not known here (Windows, some filesystems)
        name_max = 255
    if len(os.fsencode(path.name)) + _TEMPORARY_NAME_EXTRA > name_max:
        raise SegmentationInputError(
            f"The destination's name is {len(os.fsencode(path.name))} bytes long; its temporary "
            f"files beside it take up to {_TEMPORARY_NAME_EXTRA} bytes more, beyond the "
            f"folder's {name_max}: give a name of at most {name_max - _TEMPORARY_NAME_EXTRA} "
            "bytes."
        )
    return path


def drop_leading_axis(
    mask: da.Array, n_segments: int, expected: tuple[int, int] | None
) -> da.Array:
    """Drop a leading axis of length 1, the one rule shared by every writer.

    A 3-D mask of one row, ``(1, columns, segments)``, is a stack when its shape matches the
    source's total pixel matrix (or, without one to compare, its last axis has one entry per
    segment); otherwise ``(1, rows, columns)`` is a label image with a leading axis.
    """
    if mask.ndim == 4 and mask.shape[0] == 1:
        return mask[0]
    if mask.ndim == 3 and mask.shape[0] == 1:
        is_stack = (
            tuple(mask.shape[:2]) == expected if expected is not None
            else mask.shape[2] == n_segments
        )
        if not is_stack:
            return mask[0]
    return mask


def normalize_mask(
    mask: da.Array, n_segments: int, expected: tuple[int, int] | None
) -> tuple[da.Array, bool]:
    """Drop a leading axis of length 1; return the mask and whether segments are stacked."""
    mask = drop_leading_axis(mask, n_segments, expected)
    if mask.ndim == 2 and mask.dtype.kind == "f":
        mask = one_segment_plane(mask, n_segments)
    if mask.ndim == 2:
        stacked = False
    elif mask.ndim == 3:
        stacked = True
        if mask.shape[2] != n_segments and expected is not None:
            shape = tuple(mask.shape)
            if shape[1:] == expected:  # (segments, rows, columns), as PyTorch models give
                raise SegmentationInputError(
                    f"The mask {shape} has its {shape[0]} segment planes first; daskseg, as "
                    "highdicom, takes them on the last axis (rows, columns, segments): pass "
                    "np.moveaxis(mask, 0, -1) (a view, no copy)."
                )
            if shape[:2] != expected:
                raise SegmentationInputError(
                    f"The mask has shape {shape}, which is neither the source's total pixel "
                    f"matrix {expected} nor a stack of it with one plane per described segment "
                    f"{(*expected, n_segments)}."
                )
        if mask.shape[2] != n_segments:
            raise SegmentationInputError(
                f"The mask stacks {mask.shape[2]} segment planes on its last axis, but "
                f"{n_segments} segments are described; give one description per plane."
            )
    else:
        raise SegmentationInputError(
            f"The mask has {mask.ndim} dimensions {tuple(mask.shape)}; expected a label image "
            "(rows, columns) or a stack (rows, columns, segments), optionally with a leading "
            "axis of length 1."
        )
    check_mask_dtype(mask.dtype, stacked, "image")
    return mask, stacked


def one_segment_plane(mask: Any, n_segments: int) -> Any:
    """A floating-point mask without a segment axis, as the one segment's plane (highdicom
    takes such a mask as one segment, fractions or 0/1, never as labels)."""
    if n_segments != 1:
        raise SegmentationTypeError(
            f"The mask is floating point without a segment axis, which daskseg takes as one "
            f"segment, but {n_segments} segments are described: stack one plane per segment "
            "on the last axis, or give integer labels."
        )
    return mask[..., None]


def check_mask_dtype(dtype: np.dtype, stacked: bool, kind_of_label: str = "image") -> None:
    """Raise unless the values are boolean, integer or (stacked planes only) floating point."""
    if dtype.kind not in "buif":
        raise SegmentationTypeError(
            f"The mask's dtype {dtype} is not boolean, integer or floating point."
        )
    if dtype.kind == "f" and not stacked:
        raise SegmentationTypeError(
            f"A label {kind_of_label} must hold integers (segment numbers), not floating point "
            "values; stack one plane per segment on the last axis for fractional masks."
        )


def _is_whole(value: object) -> bool:
    """An integer (Python's or numpy's), not a bool."""
    return isinstance(value, numbers.Integral) and not isinstance(value, (bool, np.bool_))


def tile_size(size: Sequence[int] | int | None, source: Dataset) -> tuple[int, int]:
    """Rows and columns of a frame: ``size``, or the source's frame size by default."""
    if size is None:
        return int(source.Rows), int(source.Columns)
    # Each value an integer: a string ("64" would be 6 and 4), a bool or a fraction is refused,
    # as by highdicom.
    if _is_whole(size):
        values: list[Any] = [size, size]
    elif isinstance(size, (Sequence, np.ndarray)) and not isinstance(size, str):
        values = list(size)
    else:
        values = []
    if len(values) != 2 or not all(_is_whole(v) for v in values):
        raise SegmentationTypeError(
            f"tile_size must be two integers (rows, columns) or one, got {size!r}."
        )
    rows, columns = (int(v) for v in values)
    if rows < 1 or columns < 1:
        raise SegmentationInputError(
            f"tile_size must be positive, got {rows} x {columns}."
        )
    from daskseg._frames import MAX_FRAME_PIXELS

    # Rows and Columns are US (PS3.3 C.7.6.3): pydicom failed on writing a larger one with a
    # bare struct error; frames beyond the reader's limit were written, then refused by it.
    if max(rows, columns) > 65535 or rows * columns > MAX_FRAME_PIXELS:
        raise SegmentationInputError(
            f"tile_size {rows} x {columns} is too large: a frame has at most 65535 rows and "
            f"columns (Rows and Columns are US), and daskseg reads frames of at most "
            f"{MAX_FRAME_PIXELS} pixels (8192 x 8192); give smaller tiles (viewers use 256 to "
            "1024)."
        )
    return rows, columns
