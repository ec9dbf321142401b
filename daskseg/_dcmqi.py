"""Segment descriptions from dcmqi's segmentation metadata JSON, or from a list of labels.

The JSON is the one dcmqi's ``itkimage2segimage`` reads; the ``daskseg encode --label`` names
become the same metadata (generic "Tissue" codes, an automatic algorithm of unknown name), so
both take one path to highdicom.
"""

from __future__ import annotations

import colorsys
import json
import os
import pathlib
import warnings
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # imported where used: the CLI imports this module, and worker processes
    # that LocalCluster spawns import the CLI again as their main module (30 MB each).
    import highdicom as hd

from daskseg.errors import SegmentationInputError

__all__ = ["segment_descriptions_from_dcmqi", "segment_descriptions_from_labels"]

_ALGORITHM_TYPES = {"AUTOMATIC", "SEMIAUTOMATIC", "MANUAL"}
_TISSUE = {"CodeValue": "85756007", "CodingSchemeDesignator": "SCT", "CodeMeaning": "Tissue"}


def _code(item: dict[str, str]) -> hd.sr.CodedConcept:
    import highdicom as hd

    if not isinstance(item, dict):
        raise SegmentationInputError(
            f"a code in the metadata is a {type(item).__name__}, not a JSON object with "
            "CodeValue, CodingSchemeDesignator and CodeMeaning"
        )
    for key in ("CodeValue", "CodingSchemeDesignator", "CodeMeaning"):
        if key in item and (not isinstance(item[key], str) or not item[key].strip()):
            # Type 1 in the code sequence macro (PS3.3 Table 8.8-1): dcmqi refuses it too.
            raise SegmentationInputError(
                f"a code in the metadata has {key} {item[key]!r}, where a non-empty text is needed"
            )
    try:
        return hd.sr.CodedConcept(
            value=item["CodeValue"],
            scheme_designator=item["CodingSchemeDesignator"],
            meaning=item["CodeMeaning"],
        )
    except KeyError as missing:
        raise SegmentationInputError(f"a code in the metadata lacks {missing}") from None
    except (TypeError, ValueError) as error:  # highdicom's verdict on the values
        raise SegmentationInputError(f"a code in the metadata: {error}") from None


_HEADER_KEYS = ("ClinicalTrialSeriesID", "ClinicalTrialTimePointID",
                "ClinicalTrialCoordinatingCenterName", "BodyPartExamined")


def _whole_number(value: Any, name: str) -> int:
    """A JSON value that must be a whole number (given as a number or a string of digits)."""
    try:
        number = int(str(value).strip())
    except ValueError:
        raise SegmentationInputError(f"{name} {value!r} is not a whole number") from None
    return number


def segment_descriptions_from_dcmqi(
    metadata: dict[str, Any] | str | os.PathLike,
) -> tuple[list[hd.seg.SegmentDescription], dict[str, Any]]:
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
        ``series_number``, ``instance_number``, ``series_description``, ``content_label``,
        ``content_description``; the clinical trial IDs and ``BodyPartExamined`` as
        ``header_attributes``).

    Raises
    ------
    SegmentationInputError
        The file is missing or not JSON, or the metadata lacks what a segment needs.

    Examples
    --------
    >>> metadata = {"segmentAttributes": [[{
    ...     "labelID": 1, "SegmentLabel": "tumor", "SegmentAlgorithmType": "MANUAL",
    ...     "SegmentedPropertyCategoryCodeSequence": {"CodeValue": "49755003",
    ...         "CodingSchemeDesignator": "SCT", "CodeMeaning": "Morphologically Altered Structure"},
    ...     "SegmentedPropertyTypeCodeSequence": {"CodeValue": "108369006",
    ...         "CodingSchemeDesignator": "SCT", "CodeMeaning": "Neoplasm"}}]]}
    >>> descriptions, options = segment_descriptions_from_dcmqi(metadata)
    >>> descriptions[0].SegmentLabel, options
    ('tumor', {})
    """
    import highdicom as hd

    from daskseg._inputs import check_person_name, check_texts

    if isinstance(metadata, dict):
        data = metadata
    else:
        try:
            data = json.loads(pathlib.Path(metadata).read_text())
        except FileNotFoundError:
            raise SegmentationInputError(f"metadata file {metadata} does not exist") from None
        except (json.JSONDecodeError, UnicodeDecodeError) as error:
            raise SegmentationInputError(f"metadata file {metadata} is not JSON: {error}") from None
    if not isinstance(data, dict):
        raise SegmentationInputError(
            "the metadata is not a JSON object with segmentAttributes (dcmqi's segmentation "
            f"metadata), but a {type(data).__name__}"
        )
    groups = data.get("segmentAttributes")
    if not groups:
        raise SegmentationInputError("the data has no segmentAttributes")
    if not isinstance(groups, list) or not all(
        isinstance(group, list) and all(isinstance(segment, dict) for segment in group)
        for group in groups
    ):
        raise SegmentationInputError(
            "segmentAttributes must be a list (one per input image) of lists of segments, "
            "each a JSON object, as dcmqi writes it: [[{\"labelID\": 1, ...}]]"
        )
    segments = [dict(segment) for group in groups for segment in group]  # the caller's kept
    for segment in segments:
        if "labelID" not in segment:
            raise SegmentationInputError("a segment in the data has no labelID")
        segment["labelID"] = _whole_number(segment["labelID"], "labelID")
    labels = [segment.get("labelID") for segment in segments]
    repeated = sorted({label for label in labels if labels.count(label) > 1}, key=str)
    if repeated:
        raise SegmentationInputError(
            f"labelID {repeated[0]} is in {labels.count(repeated[0])} segments of the metadata "
            f"({len(groups)} segmentAttributes groups): dcmqi's itkimage2segimage takes one "
            "image per group (its way of overlapping segments), daskseg one mask; give one "
            "group, or a stack of segment planes (one description each)"
        )
    descriptions = []
    for segment in sorted(segments, key=lambda s: s["labelID"]):
        # dcmqi's schema requires the type; without it, dcmqi takes its default, SEMIAUTOMATIC.
        algorithm_type = str(segment.get("SegmentAlgorithmType", "SEMIAUTOMATIC")).upper()
        if algorithm_type not in _ALGORITHM_TYPES:
            raise SegmentationInputError(f"unknown SegmentAlgorithmType {algorithm_type!r}")
        algorithm = None
        if algorithm_type != "MANUAL":
            for key in ("SegmentAlgorithmName", "SegmentAlgorithmVersion"):
                if key in segment and (segment[key] is None or not str(segment[key]).strip()):
                    # Type 1C for an automatic or semiautomatic segment (PS3.3 C.8.20.2), and
                    # Type 1 in its Algorithm Identification: dcmqi refuses it too. Left out,
                    # it is "unknown".
                    raise SegmentationInputError(
                        f"segment {segment['labelID']} is {algorithm_type} but its {key} is "
                        f"{segment[key]!r}; name the algorithm, or leave {key} out"
                    )
            algorithm = hd.AlgorithmIdentificationSequence(
                name=str(segment.get("SegmentAlgorithmName", "unknown")),
                version=str(segment.get("SegmentAlgorithmVersion", "unknown")),
                family=hd.sr.CodedConcept("123110", "DCM", "Artificial Intelligence"),
            )
        options: dict[str, Any] = {}
        if "AnatomicRegionSequence" in segment:
            options["anatomic_regions"] = [_code(segment["AnatomicRegionSequence"])]
        if "recommendedDisplayRGBValue" in segment:
            options["display_color"] = _display_color(segment)
        # dcmqi's names for the tracking attributes (PS3.3 C.8.20.4, TrackingID and TrackingUID).
        if "TrackingIdentifier" in segment:
            options["tracking_id"] = str(segment["TrackingIdentifier"])
        if "TrackingUniqueIdentifier" in segment:
            options["tracking_uid"] = str(segment["TrackingUniqueIdentifier"])
        if "SegmentedPropertyCategoryCodeSequence" not in segment or (
            "SegmentedPropertyTypeCodeSequence" not in segment
        ):
            raise SegmentationInputError(
                f"segment {segment['labelID']} lacks SegmentedPropertyCategoryCodeSequence "
                "or SegmentedPropertyTypeCodeSequence"
            )
        # dcmqi's itkimage2segimage labels a segment by its SegmentLabel, else its
        # SegmentDescription, else its property type's meaning (Itk2DicomConverter.cpp).
        type_code = segment["SegmentedPropertyTypeCodeSequence"]
        label = (segment.get("SegmentLabel") or segment.get("SegmentDescription")
                 or (type_code.get("CodeMeaning") if isinstance(type_code, dict) else None)
                 or f"Segment {segment['labelID']}")
        category = _code(segment["SegmentedPropertyCategoryCodeSequence"])
        property_type = _code(segment["SegmentedPropertyTypeCodeSequence"])
        # pydicom warns of a value (a label of 65 characters) that highdicom, or daskseg's
        # check of the texts, then refuses: the refusal alone is said.
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            try:
                description = hd.seg.SegmentDescription(
                    segment_number=int(segment["labelID"]),
                    segment_label=label,
                    segmented_property_category=category,
                    segmented_property_type=property_type,
                    algorithm_type=algorithm_type,
                    algorithm_identification=algorithm,
                    **options,
                )
            except (ValueError, TypeError) as error:  # highdicom's verdict on the data
                raise SegmentationInputError(
                    f"segment {segment['labelID']} of the data: {error}"
                ) from error
            check_texts(description, f"Segment {segment['labelID']}'s")
        for warning in caught:
            warnings.warn_explicit(warning.message, warning.category, warning.filename,
                                   warning.lineno)
        if "SegmentDescription" in segment:
            description.SegmentDescription = segment["SegmentDescription"]
        if "SegmentedPropertyTypeModifierCodeSequence" in segment:
            # PS3.3 C.8.20.2: the modifier sits inside the property type's code item.
            description.SegmentedPropertyTypeCodeSequence[0].SegmentedPropertyTypeModifierCodeSequence = [
                _code(segment["SegmentedPropertyTypeModifierCodeSequence"])
            ]
        if "AnatomicRegionModifierSequence" in segment:
            # Laterality and the like, inside the region's code item (PS3.3 10.5), as dcmqi
            # writes it; without a region it modifies nothing.
            if "AnatomicRegionSequence" not in segment:
                raise SegmentationInputError(
                    f"segment {segment['labelID']} has an AnatomicRegionModifierSequence "
                    "without an AnatomicRegionSequence to modify"
                )
            description.AnatomicRegionSequence[0].AnatomicRegionModifierSequence = [
                _code(segment["AnatomicRegionModifierSequence"])
            ]
        descriptions.append(description)
    options = {}
    for key, option in [
        ("ContentCreatorName", "content_creator_name"),
        ("SeriesDescription", "series_description"),
        ("ContentLabel", "content_label"),
        ("ContentDescription", "content_description"),
    ]:
        if data.get(key) is not None:  # null: left out, as dcmqi's schema takes it
            options[option] = data[key]
    if "content_creator_name" in options:
        check_person_name(options["content_creator_name"], "ContentCreatorName")
    # What dcmqi writes into the header as given: the Clinical Trial Series module (PS3.3
    # C.7.3.2) and the body part; null is left out (it was written as the text "None").
    attributes = {key: str(data[key]) for key in _HEADER_KEYS if data.get(key) is not None}
    if attributes:
        options["header_attributes"] = attributes
    for key, option in [("SeriesNumber", "series_number"), ("InstanceNumber", "instance_number")]:
        if data.get(key) is not None:
            options[option] = _whole_number(data[key], key)
    return descriptions, options


def _display_color(segment: dict[str, Any]) -> hd.color.CIELabColor:
    import highdicom as hd

    rgb = segment["recommendedDisplayRGBValue"]
    try:
        values = [float(v) for v in rgb]
    except (TypeError, ValueError):
        values = []
    if len(values) != 3 or not all(0 <= v <= 255 for v in values):
        raise SegmentationInputError(
            f"segment {segment['labelID']}: recommendedDisplayRGBValue {rgb!r} is not three "
            "values from 0 to 255"
        )
    return hd.color.CIELabColor.from_rgb(*values)


def renumber_as_dcmqi(descriptions: Sequence[hd.seg.SegmentDescription],
                      segmentation_type: str) -> list[int] | None:
    """Number BINARY and FRACTIONAL segments 1..n as dcmqi's itkimage2segimage does, in place,
    when their labelIDs skip numbers (1, 2, 5); return the labelIDs, the mask's values of the
    segments (``write_segmentation``'s ``label_values``), or None when nothing changed. A
    LABELMAP keeps them: its pixels hold the segment numbers."""
    label_ids = [int(description.SegmentNumber) for description in descriptions]
    if segmentation_type.upper() == "LABELMAP" or label_ids == list(
        range(1, len(label_ids) + 1)
    ):
        return None
    for number, description in enumerate(descriptions, 1):
        description.SegmentNumber = number
    return label_ids


def segment_descriptions_from_labels(
    labels: Sequence[str], segmentation_type: str = "BINARY"
) -> list[hd.seg.SegmentDescription]:
    """One description per label, numbered 1..n in order, through the dcmqi path.

    A LABELMAP SEG of several segments needs a distinct display colour for each (highdicom):
    hues spread by the golden ratio give every label its own.
    """
    segments = []
    for number, label in enumerate(labels, start=1):
        segment: dict[str, Any] = {
            "labelID": number,
            "SegmentLabel": label,
            "SegmentAlgorithmType": "AUTOMATIC",
            "SegmentedPropertyCategoryCodeSequence": _TISSUE,
            "SegmentedPropertyTypeCodeSequence": _TISSUE,
        }
        if str(segmentation_type).upper() == "LABELMAP":
            rgb = colorsys.hsv_to_rgb((number * 0.61803398875) % 1.0, 0.8, 0.9)
            segment["recommendedDisplayRGBValue"] = [round(255 * v) for v in rgb]
        segments.append(segment)
    descriptions, _ = segment_descriptions_from_dcmqi({"segmentAttributes": [segments]})
    return descriptions
