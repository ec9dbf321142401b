"""The frame index: byte ranges and tile positions of every frame, read without a cluster."""

from __future__ import annotations

import highdicom as hd
import numpy as np
import pydicom
import pytest
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, HTJ2KLossless, JPEG2000Lossless, RLELossless

from daskseg._decode import decode_frame
from daskseg._frames import (
    FileSource,
    check_segmentation,
    file_meta_transfer_syntax,
    index_frames,
    locate_frames,
    open_file,
)
from daskseg.plan import TileGrid

from test_read import highdicom_file


def open_index(path):
    with open_file(str(path)) as handle:
        header = pydicom.dcmread(handle, stop_before_pixels=True)
        layout, ranges = locate_frames(handle, header, handle.tell())
    return header, layout, ranges


@pytest.mark.parametrize("syntax", [ExplicitVRLittleEndian, JPEG2000Lossless, RLELossless])
def test_every_frame_located_decodes_to_highdicoms_frame(tmp_path, syntax):
    segmentation_type = "BINARY" if syntax == JPEG2000Lossless else "LABELMAP"
    if syntax == ExplicitVRLittleEndian:
        segmentation_type = "BINARY"  # 1-bit frames that do not fill whole bytes
    path = highdicom_file(tmp_path, segmentation_type, syntax, "TILED_SPARSE")
    header, layout, ranges = open_index(path)
    expected = hd.seg.segread(path).get_stored_frame  # 1-based
    with FileSource(str(path)).open() as reader:
        for index in range(int(header.NumberOfFrames)):
            frame_ranges = layout.ranges(index) if ranges is None else ranges[index]
            got = decode_frame(layout, reader.read(frame_ranges), index)
            np.testing.assert_array_equal(got, expected(index + 1))


def test_index_places_each_frame_at_its_tile_and_segment(tmp_path):
    path = highdicom_file(tmp_path, "BINARY", JPEG2000Lossless, "TILED_SPARSE")
    header, _, _ = open_index(path)
    grid = TileGrid(230, 170, 64, 48)
    table = index_frames(header, [1, 2, 3], grid)
    assert table.shape == (3, 4, 4)
    assert sorted(table[table >= 0].tolist()) == list(range(int(header.NumberOfFrames)))
    for index, item in enumerate(header.PerFrameFunctionalGroupsSequence):
        position = item.PlanePositionSlideSequence[0]
        segment = int(item.SegmentIdentificationSequence[0].ReferencedSegmentNumber)
        row = (int(position.RowPositionInTotalImagePixelMatrix) - 1) // 64
        column = (int(position.ColumnPositionInTotalImagePixelMatrix) - 1) // 48
        assert table[segment - 1, row, column] == index


def test_tiled_full_frames_follow_the_implicit_order(tmp_path):
    path = highdicom_file(tmp_path, "BINARY", ExplicitVRLittleEndian, "TILED_FULL")
    header, _, _ = open_index(path)
    table = index_frames(header, [1, 2, 3], TileGrid(230, 170, 64, 48))
    assert table.ravel().tolist() == list(range(3 * 16))


def test_tiled_full_segments_other_than_1_to_n_are_refused(tmp_path):
    # Frames without a number of their own: numbered 5 and 9, the pairing is unknown (daskseg
    # paired them by rank, highdicom read them as no segment's).
    from daskseg import SegmentationFileError

    path = highdicom_file(tmp_path, "BINARY", ExplicitVRLittleEndian, "TILED_FULL")
    header, _, _ = open_index(path)
    with pytest.raises(SegmentationFileError, match=r"numbers them \[2, 5, 9\]"):
        index_frames(header, [2, 5, 9], TileGrid(230, 170, 64, 48))


def test_segmentation_type_bits_and_an_empty_segment_sequence_are_checked():
    from daskseg import SegmentationFileError

    header = Dataset()
    for kind, bits in [("BINARY", 1), ("FRACTIONAL", 8), ("LABELMAP", 8), ("LABELMAP", 16)]:
        header.SegmentationType = kind
        header.MaximumFractionalValue = 255
        assert check_segmentation(header, [1, 2], bits, "seg.dcm") == kind
    # A BINARY SEG of bytes read its 255s as segment values; of no segment, it was opened
    # and the caller told that segment_numbers was empty.
    for kind, bits, says in [("BINARY", 8, "BINARY SEG has BitsAllocated 1, this one 8"),
                             ("FRACTIONAL", 1, "FRACTIONAL SEG has BitsAllocated 8, this one 1"),
                             ("LABELMAP", 1, "LABELMAP SEG has BitsAllocated 8 or 16")]:
        header.SegmentationType = kind
        with pytest.raises(SegmentationFileError, match=says):
            check_segmentation(header, [1], bits, "seg.dcm")
    header.SegmentationType = "BINARY"
    with pytest.raises(SegmentationFileError, match="describes no segment"):
        check_segmentation(header, [], 1, "seg.dcm")


def test_file_meta_transfer_syntax_is_read_from_the_start_of_a_file(tmp_path):
    """From the first bytes of a file, or of a multipart answer holding one (DICOMweb)."""
    dataset = Dataset()
    dataset.file_meta = FileMetaDataset()
    dataset.file_meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.66.4"
    dataset.file_meta.MediaStorageSOPInstanceUID = "1.2.3"
    dataset.file_meta.TransferSyntaxUID = HTJ2KLossless
    dataset.PatientName = "x"
    dataset.save_as(tmp_path / "x.dcm", enforce_file_format=True)
    data = b"--b\r\nContent-Type: application/dicom\r\n\r\n" + (tmp_path / "x.dcm").read_bytes()
    assert file_meta_transfer_syntax(data) == HTJ2KLossless
    cut = data.index(HTJ2KLossless.encode()) + 5
    assert file_meta_transfer_syntax(data[:cut]) is None  # the value cut short
    assert file_meta_transfer_syntax(b"not a DICOM file") is None
