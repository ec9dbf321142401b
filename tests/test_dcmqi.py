"""Segment descriptions from dcmqi's metadata JSON and from --label names (no cluster)."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest

from daskseg import SegmentationInputError
from daskseg._dcmqi import segment_descriptions_from_dcmqi, segment_descriptions_from_labels
from daskseg.synthetic import make_slide

from test_cli import DCMQI


def test_dcmqi_metadata_gives_descriptions_and_options():
    descriptions, options = segment_descriptions_from_dcmqi(DCMQI)
    assert [int(d.SegmentNumber) for d in descriptions] == [1, 2]
    assert options == {"content_creator_name": "Reader^One",
                       "series_description": "Tumor segmentation", "series_number": 300,
                       "instance_number": 1,
                       "header_attributes": {"ClinicalTrialSeriesID": "Session1"}}
    assert "RecommendedDisplayCIELabValue" in descriptions[0]


def test_dcmqi_metadata_from_a_file(tmp_path):
    path = tmp_path / "meta.json"
    path.write_text(json.dumps(DCMQI))
    descriptions, _ = segment_descriptions_from_dcmqi(path)
    assert [d.SegmentLabel for d in descriptions] == ["tumor", "stroma"]


def test_segments_without_a_label_are_labelled_as_dcmqi_labels_them():
    # itkimage2segimage (Itk2DicomConverter.cpp): SegmentLabel, else SegmentDescription, else
    # the property type's CodeMeaning.
    first, second = (dict(segment) for segment in DCMQI["segmentAttributes"][0][:2])
    del first["SegmentLabel"], second["SegmentLabel"]
    first["SegmentDescription"] = "Described"
    second.pop("SegmentDescription", None)
    descriptions, _ = segment_descriptions_from_dcmqi(
        {**DCMQI, "segmentAttributes": [[first, second]]})
    assert [d.SegmentLabel for d in descriptions] == [
        "Described", second["SegmentedPropertyTypeCodeSequence"]["CodeMeaning"]]


@pytest.mark.parametrize("metadata, message", [
    ({}, "no segmentAttributes"),
    ({"segmentAttributes": [[{"SegmentLabel": "x"}]]}, "no labelID"),
    ({"segmentAttributes": [[{"labelID": 1, "SegmentAlgorithmType": "GUESS"}]]},
     "SegmentAlgorithmType"),
    ({"segmentAttributes": [[{"labelID": 1}]]}, "SegmentedPropertyCategoryCodeSequence"),
    # dcmqi's overlapping segments: one image per group, label values repeated across groups
    ({"segmentAttributes": [[{"labelID": 1}], [{"labelID": 1}]]},
     "labelID 1 is in 2 segments of the metadata .2 segmentAttributes groups"),
    ({"segmentAttributes": [[{"labelID": 1}], [{"labelID": "1"}]]}, "labelID 1 is in 2"),
    # What people write by hand; each was a Python exception and a traceback from the CLI.
    ({"segmentAttributes": [[{"labelID": "liver"}]]}, "labelID 'liver' is not a whole number"),
    ({"SeriesNumber": "abc", **{k: v for k, v in DCMQI.items() if k != "SeriesNumber"}},
     "SeriesNumber 'abc' is not a whole number"),
    ({"segmentAttributes": [{"labelID": 1}]}, "must be a list .one per input image. of lists"),
    ({"segmentAttributes": [[{**DCMQI["segmentAttributes"][0][0],
                              "recommendedDisplayRGBValue": [255, 0]}]]},
     "recommendedDisplayRGBValue \\[255, 0\\] is not three values"),
    ({"segmentAttributes": [[{**DCMQI["segmentAttributes"][0][0],
                              "SegmentedPropertyTypeCodeSequence": [{"CodeValue": "1"}]}]]},
     "a code in the metadata is a list"),
    ({"segmentAttributes": [[{**DCMQI["segmentAttributes"][0][0],
                              "AnatomicRegionModifierSequence": {
                                  "CodeValue": "7771000", "CodingSchemeDesignator": "SCT",
                                  "CodeMeaning": "Left"}}]]},
     "AnatomicRegionModifierSequence without an AnatomicRegionSequence"),
    # Found by a helper's hunt against dcmqi: each was written, and failed dciodvfy.
    ({"segmentAttributes": [[{**DCMQI["segmentAttributes"][0][0],
                              "SegmentedPropertyTypeCodeSequence": {
                                  "CodeValue": "1", "CodingSchemeDesignator": "SCT",
                                  "CodeMeaning": ""}}]]},
     "a code in the metadata has CodeMeaning '', where a non-empty text is needed"),
    ({"segmentAttributes": [[{**DCMQI["segmentAttributes"][0][0], "SegmentAlgorithmType":
                              "AUTOMATIC", "SegmentAlgorithmName": None}]]},
     "segment 1 is AUTOMATIC but its SegmentAlgorithmName is None"),
    ({**DCMQI, "ContentCreatorName": "c" * 65}, "ContentCreatorName 'c+' is not a person name"),
    ({**DCMQI, "ContentCreatorName": "a^b^c^d^e^f"}, "at most five components"),
])
def test_bad_metadata_raises_an_input_error(metadata, message):
    with pytest.raises(SegmentationInputError, match=message):
        segment_descriptions_from_dcmqi(metadata)


def test_missing_metadata_file_raises_an_input_error(tmp_path):
    with pytest.raises(SegmentationInputError, match="does not exist"):
        segment_descriptions_from_dcmqi(tmp_path / "absent.json")


@pytest.mark.parametrize("segmentation_type", ["BINARY", "LABELMAP"])
def test_labels_become_numbered_descriptions(segmentation_type):
    descriptions = segment_descriptions_from_labels(["tumor", "stroma", "fat"], segmentation_type)
    assert [(int(d.SegmentNumber), d.SegmentLabel) for d in descriptions] == [
        (1, "tumor"), (2, "stroma"), (3, "fat")]
    algorithm = descriptions[0].SegmentationAlgorithmIdentificationSequence[0]
    assert "synthetic" not in algorithm.AlgorithmName.lower()
    colours = [tuple(d.get("RecommendedDisplayCIELabValue", ())) for d in descriptions]
    if segmentation_type == "LABELMAP":  # highdicom needs a distinct colour per label
        assert len(set(colours)) == 3


def test_what_dcmqi_writes_of_the_metadata_reaches_the_descriptions():
    """Laterality (the region's modifier), the tracking ID and UID, as dcmqi writes them; the
    caller's metadata is left as it was."""
    segment = {**DCMQI["segmentAttributes"][0][0], "labelID": "1",
               "AnatomicRegionSequence": {"CodeValue": "64033007",
                                          "CodingSchemeDesignator": "SCT",
                                          "CodeMeaning": "Kidney"},
               "AnatomicRegionModifierSequence": {"CodeValue": "7771000",
                                                  "CodingSchemeDesignator": "SCT",
                                                  "CodeMeaning": "Left"},
               "TrackingIdentifier": "kidney-L", "TrackingUniqueIdentifier": "2.25.123456789"}
    metadata = {"BodyPartExamined": "ABDOMEN", "ContentDescription": "Kidneys",
                "segmentAttributes": [[segment]]}
    (description,), options = segment_descriptions_from_dcmqi(metadata)
    region = description.AnatomicRegionSequence[0]
    assert region.CodeMeaning == "Kidney"
    assert region.AnatomicRegionModifierSequence[0].CodeMeaning == "Left"
    assert (description.TrackingID, description.TrackingUID) == ("kidney-L", "2.25.123456789")
    assert options == {"content_description": "Kidneys",
                       "header_attributes": {"BodyPartExamined": "ABDOMEN"}}
    assert segment["labelID"] == "1"  # not the caller's data changed


def test_null_values_are_left_out_and_a_missing_algorithm_type_is_dcmqi_s_default():
    """A null was written as the text "None" (ClinicalTrialSeriesID 'None'); a segment without
    SegmentAlgorithmType was AUTOMATIC where dcmqi takes its schema's default, SEMIAUTOMATIC
    (a helper's hunt)."""
    segment = {key: value for key, value in DCMQI["segmentAttributes"][0][0].items()
               if not key.startswith("SegmentAlgorithm")}
    descriptions, options = segment_descriptions_from_dcmqi(
        {**DCMQI, "ClinicalTrialSeriesID": None, "ContentCreatorName": None,
         "BodyPartExamined": None, "SeriesNumber": None, "segmentAttributes": [[segment]]})
    assert "header_attributes" not in options and "content_creator_name" not in options
    assert "series_number" not in options
    assert descriptions[0].SegmentAlgorithmType == "SEMIAUTOMATIC"
    assert descriptions[0].SegmentAlgorithmName == "unknown"


def test_a_label_pydicom_warns_of_and_daskseg_refuses_is_said_once(tmp_path):
    """The CLI printed pydicom's two warning lines before its one error line."""
    make_slide(64, 64, tile_size=(32, 32)).save_as(tmp_path / "slide.dcm", enforce_file_format=True)
    np.save(tmp_path / "mask.npy", np.ones((64, 64), np.uint8))
    segment = {**DCMQI["segmentAttributes"][0][0], "SegmentLabel": "x" * 65}
    (tmp_path / "meta.json").write_text(json.dumps({**DCMQI, "segmentAttributes": [[segment]]}))
    done = subprocess.run(
        [sys.executable, "-m", "daskseg", "encode", str(tmp_path / "mask.npy"),
         str(tmp_path / "slide.dcm"), "-o", str(tmp_path / "seg.dcm"), "--metadata",
         str(tmp_path / "meta.json"), "--quiet", "--workers", "1"],
        capture_output=True, text=True, timeout=300)
    assert done.returncode == 1
    assert done.stderr.strip().splitlines() == [done.stderr.strip()]
    assert done.stderr.startswith("daskseg: error: Segment 1's SegmentLabel cannot be written")
    assert not (tmp_path / "seg.dcm").exists()
