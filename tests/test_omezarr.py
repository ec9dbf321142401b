"""SEG <-> OME-Zarr label images, checked with ome-zarr-py's own reader and writer."""

from __future__ import annotations

import json

import numpy as np
import pytest
import zarr
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import daskseg
from daskseg.errors import DestinationExistsError, SegmentationInputError
from daskseg.synthetic import make_segment_descriptions, make_slide, make_tissue_mask

ome_reader = pytest.importorskip("ome_zarr.reader")
ome_io = pytest.importorskip("ome_zarr.io")
ome_writer = pytest.importorskip("ome_zarr.writer")

SHAPE, TILE = (300, 420), (64, 64)


@pytest.fixture(scope="module")
def seg(tmp_path_factory, dask_client):
    folder = tmp_path_factory.mktemp("omezarr")
    source = make_slide(*SHAPE, tile_size=TILE)
    mask = make_tissue_mask(*SHAPE, 3, chunks=128).compute()
    descriptions = make_segment_descriptions(3, segmentation_type="LABELMAP",
                                             labels=["tumor", "stroma", "necrosis"])
    path = daskseg.write_segmentation(mask, source, descriptions, folder / "seg.dcm",
                                      segmentation_type="LABELMAP", client=dask_client)
    return path, source, mask


def _rgb(description):
    import highdicom as hd

    return hd.color.CIELabColor.from_dicom_value(description.RecommendedDisplayCIELabValue).to_rgb(clip=True)


def _nodes(store):
    return list(ome_reader.Reader(ome_io.parse_url(str(store)))())


def test_ome_zarr_reader_finds_the_labels_and_their_levels(seg, tmp_path, dask_client):
    path, source, mask = seg
    out = daskseg.segmentation_to_ome_zarr(path, tmp_path / "seg.ome.zarr", name="seg",
                                           client=dask_client)
    nodes = {node.zarr.basename(): node for node in _nodes(out)}
    label = nodes["seg"]
    assert [spec.__class__.__name__ for spec in label.specs] == ["Label", "Multiscales"]
    shapes = [tuple(level.shape) for level in label.data]
    # Halved (rounded down) until a level fits in one 64 x 64 tile.
    assert shapes == [(300, 420), (150, 210), (75, 105), (37, 52)]
    expected = daskseg.read_segmentation(path, combine_segments=True).compute()
    np.testing.assert_array_equal(label.data[0].compute(), expected)
    np.testing.assert_array_equal(expected, mask)
    # Each level is nearest-neighbour: its values are a subset of the level above.
    for upper, lower in zip(label.data, label.data[1:]):
        assert set(np.unique(lower.compute())) <= set(np.unique(upper.compute()))
    np.testing.assert_array_equal(label.data[1].compute(), expected[1::2, 1::2])

    # The colours are the SEG's recommended display colours; properties carry each segment.
    reader = daskseg.open_segmentation(path)
    for number, item in zip(reader.segment_numbers, reader.segment_descriptions):
        rgb = _rgb(item)
        assert label.metadata["color"][number] == pytest.approx([*(c / 255 for c in rgb), 1.0], abs=0.003)
        properties = label.metadata["properties"][number]
        assert properties["segment-number"] == number
        assert properties["segment-label"] == str(item.SegmentLabel)
        assert properties["segmented-property-type"]["code-meaning"] == "Tissue"
    # Pixel size from the SEG's pixel measures (mm) in micrometres, doubled per level.
    spacing = float(source.SharedFunctionalGroupsSequence[0].PixelMeasuresSequence[0].PixelSpacing[0])
    transforms = label.metadata["coordinateTransformations"]
    assert transforms[0][0]["scale"] == pytest.approx([spacing * 1000] * 2)
    assert transforms[1][0]["scale"] == pytest.approx([spacing * 2000] * 2)
    assert label.metadata["axes"][0]["unit"] == "micrometer"
    # The image is a placeholder of the same shapes that stores no chunk.
    image = zarr.open_group(str(out), mode="r")
    assert image["s0"].shape == SHAPE and image["s0"].nchunks_initialized == 0
    assert json.loads((out / "zarr.json").read_text())["attributes"]["ome"]["version"] == "0.5"
    # ome-zarr-models (the NGFF 0.5 schema in pydantic) accepts the image, its labels/ and the label image.
    models = pytest.importorskip("ome_zarr_models.v05.image")
    label_models = pytest.importorskip("ome_zarr_models.v05.image_label")
    assert models.Image.from_zarr(image).labels is not None
    label_models.ImageLabel.from_zarr(zarr.open_group(str(out / "labels" / "seg"), mode="r"))

    # And back: the label image (its group, or its level 0) writes the same SEG pixels.
    descriptions = daskseg.segment_descriptions_from_ome_zarr(out, segmentation_type="LABELMAP")
    assert [str(d.SegmentLabel) for d in descriptions] == ["tumor", "stroma", "necrosis"]
    # Colours outside sRGB were clipped on the way out: compare the RGB shown, not the CIELab.
    for original, copy in zip(reader.segment_descriptions, descriptions):
        assert _rgb(copy) == pytest.approx(_rgb(original), abs=1)
    for mask_path in (out, out / "labels" / "seg", out / "labels" / "seg" / "s0"):
        again = daskseg.write_segmentation(str(mask_path), source, descriptions,
                                           tmp_path / "again.dcm", segmentation_type="LABELMAP",
                                           client=dask_client, overwrite=True)
        np.testing.assert_array_equal(
            daskseg.read_segmentation(again, combine_segments=True).compute(), mask)

    with pytest.raises(DestinationExistsError):
        daskseg.segmentation_to_ome_zarr(path, out)


@pytest.mark.parametrize("version", ["0.4", "0.5"])  # Zarr v2 and v3 stores
def test_labels_written_by_ome_zarr_py_become_a_seg(tmp_path, dask_client, version):
    from ome_zarr.format import format_from_version

    fmt = format_from_version(version)
    rng = np.random.default_rng(3)
    labels = np.zeros((256, 200), dtype=np.uint8)
    for value in (1, 2):
        r, c = rng.integers(0, 150, 2)
        labels[r : r + 60, c : c + 40] = value
    store = tmp_path / "image.ome.zarr"
    ome_writer.write_image(np.zeros((256, 200), np.uint8), str(store), axes="yx", fmt=fmt)
    ome_writer.write_labels(
        labels, str(store), name="cells", axes="yx", fmt=fmt,
        label_metadata={
            "colors": [{"label-value": 1, "rgba": [255, 0, 0, 255]},
                       {"label-value": 2, "rgba": [0, 0, 255, 255]}],
            "properties": [{"label-value": 1, "segment-label": "nucleus"},
                           {"label-value": 2, "segment-label": "cytoplasm"}],
        },
    )
    descriptions = daskseg.segment_descriptions_from_ome_zarr(store)
    assert [str(d.SegmentLabel) for d in descriptions] == ["nucleus", "cytoplasm"]
    assert _rgb(descriptions[0]) == pytest.approx((255, 0, 0), abs=1)
    source = make_slide(256, 200, tile_size=(64, 64))
    path = daskseg.write_segmentation(str(store), source, descriptions, tmp_path / "cells.dcm",
                                      client=dask_client)
    np.testing.assert_array_equal(daskseg.read_segmentation(path, combine_segments=True).compute(), labels)


def test_the_whole_segment_description_survives_the_round_trip(tmp_path, thread_client):
    """SEG -> OME-Zarr -> SEG keeps each segment's description: algorithm (name, version,
    family), tracking ID and UID, anatomic regions, primary anatomic structures and text."""
    import highdicom as hd
    from pydicom.sr.codedict import codes

    source = make_slide(64, 64, tile_size=(32, 32))
    labels = np.zeros((64, 64), np.uint8)
    labels[5:30, 5:30], labels[35:60, 20:60] = 1, 2
    descriptions = [
        hd.seg.SegmentDescription(
            1, "liver", codes.SCT.Organ, codes.SCT.Liver, "AUTOMATIC",
            algorithm_identification=hd.AlgorithmIdentificationSequence(
                "TotalSegmentator", codes.cid7162.ArtificialIntelligence, "2.4.0"),
            tracking_id="liver of case 7", tracking_uid=hd.UID(),
            anatomic_regions=[codes.SCT.Abdomen],
            primary_anatomic_structures=[codes.SCT.Liver]),
        hd.seg.SegmentDescription(
            2, "lesion", hd.sr.CodedConcept("49755003", "SCT", "Morphologically Altered Structure"),
            codes.SCT.Neoplasm, "MANUAL"),
    ]
    descriptions[1].SegmentDescription = "drawn by a reader"
    # Modifiers (laterality, say) of the property type and the anatomic region.
    left = hd.sr.CodedConcept("7771000", "SCT", "Left")
    descriptions[0].SegmentedPropertyTypeCodeSequence[0].SegmentedPropertyTypeModifierCodeSequence \
        = [left]
    descriptions[0].AnatomicRegionSequence[0].AnatomicRegionModifierSequence = [left]
    path = daskseg.write_segmentation(labels, source, descriptions, tmp_path / "seg.dcm",
                                      client=thread_client)
    out = daskseg.segmentation_to_ome_zarr(path, tmp_path / "seg.ome.zarr", client=thread_client)
    label_models = pytest.importorskip("ome_zarr_models.v05.image_label")
    label_models.ImageLabel.from_zarr(zarr.open_group(str(out / "labels" / "segmentation"),
                                                      mode="r"))
    again = daskseg.segment_descriptions_from_ome_zarr(out)
    for original, copy in zip(descriptions, again):
        for attribute in ("segment_number", "segment_label", "segmented_property_category",
                          "segmented_property_type", "algorithm_type", "tracking_id",
                          "tracking_uid", "anatomic_regions", "primary_anatomic_structures"):
            assert getattr(copy, attribute) == getattr(original, attribute), attribute
        assert copy.get("SegmentDescription") == original.get("SegmentDescription")
        for sequence, modifiers in (
                ("SegmentedPropertyTypeCodeSequence", "SegmentedPropertyTypeModifierCodeSequence"),
                ("AnatomicRegionSequence", "AnatomicRegionModifierSequence")):
            for kept, was in zip(copy.get(sequence) or [], original.get(sequence) or []):
                assert kept.get(modifiers) == was.get(modifiers), modifiers
        if original.algorithm_identification is None:
            assert copy.algorithm_identification is None
        else:
            for attribute in ("name", "version", "family"):
                assert getattr(copy.algorithm_identification, attribute) == getattr(
                    original.algorithm_identification, attribute), attribute


def test_ome_zarr_without_usable_labels_is_refused(tmp_path):
    store = tmp_path / "image.ome.zarr"
    ome_writer.write_image(np.zeros((64, 64), np.uint8), str(store), axes="yx")
    source = make_slide(64, 64, tile_size=(32, 32))
    with pytest.raises(SegmentationInputError, match="no labels/ group"):
        daskseg.write_segmentation(str(store), source, make_segment_descriptions(1), tmp_path / "x.dcm")
    labels = np.zeros((64, 64), np.uint8)
    ome_writer.write_labels(labels, str(store), name="a", axes="yx",
                            label_metadata={"properties": [{"label-value": 2}]})
    ome_writer.write_labels(labels, str(store), name="b", axes="yx")
    with pytest.raises(SegmentationInputError, match="holds 2 label images"):
        daskseg.write_segmentation(str(store), source, make_segment_descriptions(1), tmp_path / "x.dcm")
    with pytest.raises(SegmentationInputError, match="not 1..1"):
        daskseg.segment_descriptions_from_ome_zarr(store / "labels" / "a")
    # A LABELMAP's pixels hold its numbers, which may skip (as highdicom allows).
    (sparse,) = daskseg.segment_descriptions_from_ome_zarr(store / "labels" / "a",
                                                           segmentation_type="LABELMAP")
    assert int(sparse.SegmentNumber) == 2
    with pytest.raises(SegmentationInputError, match="lists no labels"):
        daskseg.segment_descriptions_from_ome_zarr(store / "labels" / "b")
    assert not (tmp_path / "x.dcm").exists()


@pytest.mark.parametrize("name", ["", ".", "..", "a/b", "__x"])
def test_a_label_name_that_is_no_zarr_node_name_is_refused(seg, tmp_path, name):
    # "" put the label image in labels/ itself, where readers look for the list of them.
    path = seg[0]
    with pytest.raises(SegmentationInputError, match="not a Zarr node name"):
        daskseg.segmentation_to_ome_zarr(path, tmp_path / "x.ome.zarr", name=name)
    assert list(tmp_path.iterdir()) == []


def test_segments_that_make_no_label_image_say_how_to_read_them(tmp_path, thread_client):
    # The reader's advice, combine_segments=False, is no argument of segmentation_to_ome_zarr.
    import highdicom as hd

    mask = np.zeros((1, 64, 64, 2), dtype=bool)
    mask[0, 10:40, 10:40] = True  # both segments
    path = tmp_path / "overlap.dcm"
    hd.seg.Segmentation(
        [make_slide(64, 64, tile_size=(32, 32))], mask, "BINARY", make_segment_descriptions(2),
        hd.UID(), 1, hd.UID(), 1, "m", "m", "1", "1", tile_pixel_array=True,
    ).save_as(path)
    with pytest.raises(SegmentationInputError, match="overlap.*OME-Zarr labels are one label "
                       "image: decode the segments apart with SegmentationReader.to_zarr"):
        daskseg.segmentation_to_ome_zarr(path, tmp_path / "x.ome.zarr", client=thread_client)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["overlap.dcm"]


@pytest.mark.parametrize("metadata, message", [
    # Each made a raw TypeError or KeyError (a traceback from the CLI).
    ({"properties": [{"label-value": 1, "tracking-id": "lesion-1"}]}, "Tracking UID"),
    ({"properties": [{"label-value": 1, "segment-algorithm-type": "deep learning"}]},
     "none of AUTOMATIC"),
    ({"colors": [{"label-value": 1, "rgba": [255]}]}, "not 3 or 4 values"),
])
def test_metadata_that_makes_no_segment_description_is_refused(tmp_path, metadata, message):
    store = tmp_path / "image.ome.zarr"
    ome_writer.write_image(np.zeros((64, 64), np.uint8), str(store), axes="yx")
    labels = np.zeros((64, 64), np.uint8)
    labels[:32] = 1
    ome_writer.write_labels(labels, str(store), name="l", axes="yx", label_metadata=metadata)
    with pytest.raises(SegmentationInputError, match=f"label 1 .*{message}.*--label or --metadata"):
        daskseg.segment_descriptions_from_ome_zarr(store)
    source = tmp_path / "slide.dcm"
    make_slide(64, 64, tile_size=(32, 32)).save_as(source, enforce_file_format=True)
    from daskseg.cli import main

    assert main(["encode", str(store), str(source), "-o", str(tmp_path / "x.dcm"), "-q",
                 "--workers", "1"]) == 1
    assert not (tmp_path / "x.dcm").exists()


@pytest.mark.parametrize("edit, message", [
    # A raw ValueError or AttributeError each; 1.5 was label 1, "red" no colour.
    (lambda ome: ome["image-label"]["properties"][0].update({"label-value": "one"}),
     "'one', not an integer"),
    (lambda ome: ome["image-label"]["properties"][0].update({"label-value": 1.5}),
     "1.5, not an integer"),
    (lambda ome: ome["image-label"].update({"colors": "red"}), "'colors' .* not a list of objects"),
    (lambda ome: ome.update({"image-label": [{"label-value": 1}]}), "not an object"),
])
def test_image_label_metadata_against_ngff_is_refused(tmp_path, edit, message):
    """NGFF "Labels": image-label is an object whose properties and colors are lists of
    objects, each label-value an integer (a helper's hunt)."""
    store = tmp_path / "image.ome.zarr"
    ome_writer.write_image(np.zeros((64, 64), np.uint8), str(store), axes="yx")
    labels = np.zeros((64, 64), np.uint8)
    labels[:32] = 1
    ome_writer.write_labels(labels, str(store), name="l", axes="yx", label_metadata={
        "properties": [{"label-value": 1}], "colors": [{"label-value": 1, "rgba": [9, 9, 9, 255]}]})
    group = zarr.open_group(str(store / "labels" / "l"), mode="r+")
    ome = json.loads(json.dumps(dict(group.attrs["ome"])))
    edit(ome)
    group.attrs["ome"] = ome
    with pytest.raises(SegmentationInputError, match=message):
        daskseg.segment_descriptions_from_ome_zarr(store)
    # 2.0 is JSON's integer 2: taken.
    ome = dict(group.attrs["ome"])
    ome["image-label"] = {"properties": [{"label-value": 1.0, "segment-label": "one"}]}
    group.attrs["ome"] = ome
    (one,) = daskseg.segment_descriptions_from_ome_zarr(store)
    assert int(one.SegmentNumber) == 1 and str(one.SegmentLabel) == "one"


def test_a_label_image_is_read_in_the_order_of_its_axes_and_a_bad_dataset_refused(
        tmp_path, thread_client):
    """NGFF: the axes are in the order of the array's dimensions. A label image written (x, y)
    made a transposed SEG without a word (a helper's hunt); a dataset path naming no array was
    a raw KeyError."""
    labels = np.zeros((96, 64), np.uint8)  # (y, x)
    labels[10:30, 5:60] = 1
    labels[50:90, 20:30] = 2
    store = tmp_path / "image.ome.zarr"
    ome_writer.write_image(np.zeros((64, 96), np.uint8), str(store), axes="xy")
    ome_writer.write_labels(labels.T.copy(), str(store), name="l", axes="xy", label_metadata={
        "properties": [{"label-value": 1}, {"label-value": 2}]})
    source = make_slide(96, 64, tile_size=(32, 32))
    path = daskseg.write_segmentation(str(store), source, make_segment_descriptions(2),
                                      tmp_path / "seg.dcm", client=thread_client)
    np.testing.assert_array_equal(
        daskseg.read_segmentation(path, combine_segments=True).compute(), labels)
    group = zarr.open_group(str(store / "labels" / "l"), mode="r+")
    ome = json.loads(json.dumps(dict(group.attrs["ome"])))
    ome["multiscales"][0]["datasets"][0]["path"] = "nope"
    group.attrs["ome"] = ome
    with pytest.raises(SegmentationInputError, match="'nope', is no Zarr array"):
        daskseg.write_segmentation(str(store), source, make_segment_descriptions(2),
                                   tmp_path / "again.dcm", client=thread_client)
    assert not (tmp_path / "again.dcm").exists()


def test_a_store_in_a_missing_folder_is_refused_and_no_folder_left(seg, tmp_path):
    """Zarr makes the folders on the way to a store: a write that then failed left them (a
    helper's hunt). A SEG of a series (opened) is refused as the wrong kind, not a TypeError."""
    from daskseg.errors import SegmentationTypeError
    from daskseg.synthetic import make_ct_series

    path = seg[0]
    with pytest.raises(SegmentationInputError, match="does not exist .* create it first"):
        daskseg.segmentation_to_ome_zarr(path, tmp_path / "new" / "deeper" / "x.ome.zarr")
    (tmp_path / "a-file").write_text("x")
    with pytest.raises(SegmentationInputError, match="not a folder"):
        daskseg.segmentation_to_ome_zarr(path, tmp_path / "a-file" / "x.ome.zarr")
    with pytest.raises(SegmentationInputError, match="does not exist .* create it first"):
        daskseg.open_segmentation(path).to_zarr(tmp_path / "new" / "x.zarr")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a-file"]
    series = make_ct_series(2, 16, 16)
    volume = daskseg.write_segmentation(np.ones((2, 16, 16), np.uint8), series,
                                        make_segment_descriptions(1), tmp_path / "ct-seg.dcm")
    with pytest.raises(SegmentationTypeError, match="decodes to NIfTI"):
        daskseg.segmentation_to_ome_zarr(daskseg.open_segmentation(volume), tmp_path / "v.ome.zarr")
    assert not (tmp_path / "v.ome.zarr").exists()


def test_cli_encodes_label_values_that_skip_as_binary_segments(tmp_path, capsys):
    """OME-Zarr labels 3 and 8 (cells of a nucleus model, say) written as BINARY: segments 1
    and 2, the values given as label_values, as dcmqi numbers labelIDs that skip."""
    import highdicom as hd

    from daskseg.cli import main

    labels = np.zeros((96, 80), np.uint8)
    labels[5:40, 10:50], labels[50:90, 20:70] = 3, 8
    store = tmp_path / "image.ome.zarr"
    ome_writer.write_image(np.zeros((96, 80), np.uint8), str(store), axes="yx")
    ome_writer.write_labels(labels, str(store), name="cells", axes="yx", label_metadata={
        "properties": [{"label-value": 3, "segment-label": "nucleus"},
                       {"label-value": 8, "segment-label": "cytoplasm"}]})
    source_path = tmp_path / "slide.dcm"
    make_slide(96, 80, tile_size=(32, 32)).save_as(source_path, enforce_file_format=True)
    out = tmp_path / "seg.dcm"
    assert main(["encode", str(store), str(source_path), "-o", str(out), "--threads", "1",
                 "-q"]) == 0
    seg = hd.seg.segread(out)
    assert [(int(s.SegmentNumber), s.SegmentLabel) for s in seg.SegmentSequence] == [
        (1, "nucleus"), (2, "cytoplasm")]
    np.testing.assert_array_equal(seg.get_total_pixel_matrix(),
                                  np.stack([labels == 3, labels == 8], axis=-1))
    # Values of any size (instance IDs) as BINARY; a LABELMAP's are at most 65535, said in one
    # line; BINARY segments get no display colour the metadata does not give (as before).
    big = labels.astype(np.uint32) * 25000
    store = tmp_path / "big.ome.zarr"
    ome_writer.write_image(np.zeros((96, 80), np.uint8), str(store), axes="yx")
    ome_writer.write_labels(big, str(store), name="cells", axes="yx", label_metadata={
        "properties": [{"label-value": 75000}, {"label-value": 200000}]})
    assert main(["encode", str(store), str(source_path), "-o", str(out), "--threads", "1",
                 "-q", "--overwrite"]) == 0
    seg = hd.seg.segread(out)
    assert [int(s.SegmentNumber) for s in seg.SegmentSequence] == [1, 2]
    assert all("RecommendedDisplayCIELabValue" not in s for s in seg.SegmentSequence)
    np.testing.assert_array_equal(seg.get_total_pixel_matrix(),
                                  np.stack([labels == 3, labels == 8], axis=-1))
    assert main(["encode", str(store), str(source_path), "-o", str(tmp_path / "lm.dcm"),
                 "--type", "LABELMAP", "--threads", "1", "-q"]) == 1
    assert "at most 65535" in capsys.readouterr().err
    assert not (tmp_path / "lm.dcm").exists()


def test_cli_decodes_to_ome_zarr_and_encodes_it_back(seg, tmp_path):
    from daskseg.cli import main

    path, source, mask = seg
    source_path = tmp_path / "slide.dcm"
    source.save_as(source_path, enforce_file_format=True)
    out = tmp_path / "seg.ome.zarr"
    assert main(["decode", str(path), "-o", str(out), "--threads", "1", "-q"]) == 0
    assert main(["decode", str(path), "-o", str(out), "--threads", "1", "-q"]) != 0  # exists
    assert main(["decode", str(path), "-o", str(out), "--threads", "1", "-q",
                 "--overwrite"]) == 0
    label = {node.zarr.basename(): node for node in _nodes(out)}["segmentation"]
    np.testing.assert_array_equal(label.data[0].compute(), mask)
    # No --label or --metadata: the segments come from the image-label metadata.
    again = tmp_path / "again.dcm"
    assert main(["encode", str(out), str(source_path), "-o", str(again), "--type", "LABELMAP",
                 "--threads", "1", "-q"]) == 0
    copy = daskseg.open_segmentation(again)
    assert [str(d.SegmentLabel) for d in copy.segment_descriptions] == ["tumor", "stroma", "necrosis"]
    np.testing.assert_array_equal(copy.to_dask(combine_segments=True).compute(), mask)
    # A plain Zarr mask still needs the segments on the command line.
    plain = tmp_path / "plain.zarr"
    zarr.create_array(str(plain), data=mask)
    assert main(["encode", str(plain), str(source_path), "-o", str(tmp_path / "x.dcm"), "-q",
                 "--threads", "1"]) != 0
    assert not (tmp_path / "x.dcm").exists()


def test_a_missing_ome_zarr_py_is_named_before_anything_is_written(seg, tmp_path, monkeypatch):
    import sys

    from daskseg.errors import MissingDependencyError

    monkeypatch.setitem(sys.modules, "ome_zarr.writer", None)  # as if not installed
    with pytest.raises(MissingDependencyError, match=r"daskseg\[ome-zarr\]"):
        daskseg.segmentation_to_ome_zarr(seg[0], tmp_path / "x.ome.zarr")
    assert list(tmp_path.iterdir()) == []


@settings(max_examples=15, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(rows=st.integers(1, 200), columns=st.integers(1, 200), tile=st.tuples(
    st.integers(1, 64), st.integers(1, 64)), n_segments=st.integers(1, 4),
    segmentation_type=st.sampled_from(["BINARY", "LABELMAP"]), seed=st.integers(0, 2**16))
def test_any_seg_goes_to_ome_zarr_and_back(tmp_path_factory, thread_client, rows, columns, tile,
                                           n_segments, segmentation_type, seed):
    """Any size and tile size: ome-zarr-py reads the labels the SEG holds at level 0 (each
    level halved until one fits in a tile or a side is 1), and they write the same SEG pixels
    back."""
    folder = tmp_path_factory.mktemp("omezarr")
    coarse = np.random.default_rng(seed).integers(0, n_segments + 1,
                                                  size=(rows // 7 + 1, columns // 7 + 1))
    mask = np.kron(coarse, np.ones((7, 7), np.int64))[:rows, :columns].astype(np.uint8)
    source = make_slide(rows, columns, tile_size=tile)
    descriptions = make_segment_descriptions(n_segments, segmentation_type=segmentation_type)
    path = daskseg.write_segmentation(mask, source, descriptions, folder / "seg.dcm",
                                      segmentation_type=segmentation_type, client=thread_client)
    out = daskseg.segmentation_to_ome_zarr(path, folder / "seg.ome.zarr", name="seg",
                                           client=thread_client)
    label = {node.zarr.basename(): node for node in _nodes(out)}["seg"]
    np.testing.assert_array_equal(label.data[0].compute(), mask)
    shapes = [tuple(level.shape) for level in label.data]
    assert shapes[0] == (rows, columns)
    for upper, lower in zip(shapes, shapes[1:]):
        assert lower == (upper[0] // 2, upper[1] // 2)
        assert (upper[0] > tile[0] or upper[1] > tile[1]) and min(upper) >= 2
    # The last level fits in a tile, or cannot be halved.
    assert (shapes[-1][0] <= tile[0] and shapes[-1][1] <= tile[1]) or min(shapes[-1]) < 2
    again = daskseg.write_segmentation(
        str(out), source, daskseg.segment_descriptions_from_ome_zarr(
            out, segmentation_type=segmentation_type),
        folder / "again.dcm", segmentation_type=segmentation_type, client=thread_client)
    np.testing.assert_array_equal(
        daskseg.read_segmentation(again, combine_segments=True).compute(scheduler="threads"),
        mask)
