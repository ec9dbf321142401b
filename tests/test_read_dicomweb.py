"""Reading SEGs from a real Orthanc by their WADO-RS instance URL: values, requests, failures.

Requests are counted in Orthanc's own log (``--verbose`` logs each HTTP request it serves), so the
requests of worker processes are counted as well as the client's.
"""

from __future__ import annotations

import contextlib
import http.server
import pathlib
import re
import socket
import time

import highdicom as hd
import numpy as np
import pydicom
import pytest
import zarr
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydicom.uid import ExplicitVRLittleEndian, HTJ2KLossless, JPEG2000Lossless
from test_dicomweb import instance_url, serving, tiny_server
from test_properties import cases as slide_cases
from test_properties import write_case
from test_read import highdicom_file

from daskseg import (
    DICOMwebError,
    SegmentationFileError,
    SegmentationInputError,
    SegmentationTypeError,
    open_segmentation,
    read_segmentation,
    segmentation_to_ome_zarr,
    write_segmentation,
)
from daskseg.cli import main
from daskseg.dicomweb import store_instance
from daskseg.synthetic import make_segment_descriptions, make_slide, make_tissue_mask

pytest.importorskip("dicomweb_client")

TYPES = ["BINARY", "FRACTIONAL", "LABELMAP"]
SYNTAXES = [ExplicitVRLittleEndian, JPEG2000Lossless]


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """A real Orthanc logging every request: (DICOMweb root, its log file)."""
    from _orthanc import orthanc_missing, run_orthanc

    reason = orthanc_missing()
    if reason:
        pytest.skip(reason)
    folder = tmp_path_factory.mktemp("orthanc-verbose")
    with run_orthanc(folder, verbose=True) as root:
        yield root, folder / "orthanc.log"


def requests_seen(log: pathlib.Path) -> list[str]:
    """The paths of the HTTP requests Orthanc has served, in order."""
    return re.findall(r"\(http\) (?:GET|POST) (\S+)", log.read_text())


def frame_requests(log: pathlib.Path, since: int) -> list[list[int]]:
    """The frame numbers of each frame request after the first ``since`` requests."""
    return [[int(n) for n in path.rsplit("/frames/", 1)[1].split(",")]
            for path in requests_seen(log)[since:] if "/frames/" in path]


def store(root: str, path: pathlib.Path) -> str:
    store_instance(path, root)
    return instance_url(root, path)


@pytest.fixture(scope="module")
def highdicom_segs(tmp_path_factory, server):
    """SEGs written by highdicom (TILED_SPARSE: omitted frames, edge tiles), stored on Orthanc."""
    root, _ = server
    folder = tmp_path_factory.mktemp("hd-segs")
    out = {}
    for kind in TYPES:
        for syntax in SYNTAXES:
            path = highdicom_file(folder, kind, syntax, "TILED_SPARSE", name=f"{kind}-{syntax}",
                                  fractional_values=kind == "FRACTIONAL")
            out[kind, syntax] = (path, store(root, path))
    return out


@pytest.mark.parametrize("syntax", SYNTAXES, ids=["native", "jpeg2000"])
@pytest.mark.parametrize("kind", TYPES)
def test_whole_read_equals_the_file_and_highdicom(highdicom_segs, kind, syntax):
    path, url = highdicom_segs[kind, syntax]
    reader = open_segmentation(url)
    assert reader.transfer_syntax_uid == syntax and reader.segmentation_type == kind
    assert reader.segment_numbers == open_segmentation(path).segment_numbers
    combine = kind != "FRACTIONAL"
    got = reader.to_dask(combine_segments=combine, chunks=100).compute()
    np.testing.assert_array_equal(got, read_segmentation(path, combine_segments=combine).compute())
    expected = hd.seg.segread(path).get_total_pixel_matrix(combine_segments=combine)
    assert got.dtype == expected.dtype
    np.testing.assert_array_equal(got, expected)


@pytest.fixture(scope="module")
def daskseg_seg(tmp_path_factory, server, dask_client):
    """A 4 x 5 tile SEG of 3 segments written by daskseg in JPEG 2000 (TILED_FULL), stored."""
    root, _ = server
    folder = tmp_path_factory.mktemp("daskseg-seg")
    source = make_slide(256, 320, tile_size=(64, 64))
    mask = make_tissue_mask(256, 320, 3, chunks=(128, 160))
    path = write_segmentation(mask, source, make_segment_descriptions(3), folder / "seg.dcm",
                              transfer_syntax_uid=JPEG2000Lossless, client=dask_client,
                              dimension_organization_type="TILED_FULL", progress=False)
    return path, store(root, path)


def test_region_on_worker_processes_fetches_only_its_frames(server, daskseg_seg, dask_client):
    _, log = server
    path, url = daskseg_seg
    before = len(requests_seen(log))
    reader = open_segmentation(url)
    opened = requests_seen(log)[before:]
    assert len(opened) == 2  # the metadata, and the frames' transfer syntax
    assert opened[0].endswith("/metadata") and opened[1].endswith("/frames/1")

    # Rows and columns 128-255: one chunk, tile rows and columns 2-3 of each of the 3 segments.
    # TILED_FULL frame numbers (PS3.3 C.7.6.17.3): segment slowest, then tile row, then column.
    before = len(requests_seen(log))
    region = reader.to_dask(chunks=128)[128:256, 128:256]
    got = dask_client.compute(region).result(timeout=120)
    np.testing.assert_array_equal(got, read_segmentation(path)[128:256, 128:256].compute())
    expected = {segment * 20 + row * 5 + column + 1
                for segment in range(3) for row in (2, 3) for column in (2, 3)}
    fetched = frame_requests(log, before)
    assert len(fetched) == 1  # the chunk's frames of all segments in one request
    assert set(fetched[0]) == expected and len(fetched[0]) == len(expected)
    assert len(requests_seen(log)) - before == 1


def test_whole_read_fetches_each_frame_once(server, daskseg_seg, dask_client):
    _, log = server
    path, url = daskseg_seg
    reader = open_segmentation(url)
    before = len(requests_seen(log))
    got = dask_client.compute(reader.to_dask(combine_segments=True, chunks=128)).result(timeout=120)
    np.testing.assert_array_equal(got, read_segmentation(path, combine_segments=True).compute())
    fetched = frame_requests(log, before)
    assert len(fetched) == 6  # one request per chunk: 2 x 3 chunks of up to 2 x 2 tiles
    assert sorted(n for batch in fetched for n in batch) == list(range(1, 61))


def test_frames_per_request_splits_a_chunk(server, daskseg_seg):
    _, log = server
    path, url = daskseg_seg
    reader = open_segmentation(url)
    reader._source = type(reader._source)(reader._source.target, frames_per_request=5)
    before = len(requests_seen(log))
    got = reader.to_dask(chunks=256)[:256, :256].compute(scheduler="sync")
    np.testing.assert_array_equal(got, read_segmentation(path)[:256, :256].compute())
    assert [len(batch) for batch in frame_requests(log, before)] == [5, 5, 5, 5, 5, 5, 5, 5, 5, 3]


def test_files_from_other_software(server, testdata):
    root, _ = server
    paths = sorted(testdata.glob("seg_image_sm_*.dcm"))
    if not paths:
        pytest.skip("no seg_image_sm_*.dcm in the shared test data")
    read = 0
    for path in paths:
        url = store(root, path)
        header = pydicom.dcmread(path, stop_before_pixels=True)
        if header.BitsAllocated == 1 and header.Rows * header.Columns % 8:
            # Native 1-bit frames that start mid-byte: no server cuts them out (Orthanc: 400).
            with pytest.raises(SegmentationInputError, match="do not fill whole bytes"):
                open_segmentation(url)
            continue
        expected = hd.seg.segread(path).get_total_pixel_matrix()
        np.testing.assert_array_equal(read_segmentation(url).compute(), expected, err_msg=path.name)
        read += 1
    assert read or not any("labelmap" in path.name for path in paths)


def test_to_zarr_and_ome_zarr(daskseg_seg, dask_client, tmp_path):
    path, url = daskseg_seg
    target = open_segmentation(url).to_zarr(tmp_path / "seg.zarr", combine_segments=True,
                                           client=dask_client)
    expected = read_segmentation(path, combine_segments=True).compute()
    np.testing.assert_array_equal(target[:], expected)
    written = segmentation_to_ome_zarr(url, tmp_path / "seg.ome.zarr", client=dask_client)
    np.testing.assert_array_equal(zarr.open_group(written)["labels/segmentation/s0"][:], expected)


def test_command_line(daskseg_seg, tmp_path, capsys):
    path, url = daskseg_seg
    assert main(["info", url]) == 0
    out = capsys.readouterr().out
    assert f"url:             {url} (DICOMweb)" in out and "JPEG 2000" in out and "frames:          60" in out
    assert main(["decode", url, "-o", str(tmp_path / "seg.zarr"), "--combine-segments",
                 "--threads", "1", "--quiet"]) == 0
    np.testing.assert_array_equal(zarr.open_array(tmp_path / "seg.zarr")[:],
                                  read_segmentation(path, combine_segments=True).compute())
    assert main(["decode", url, "-o", str(tmp_path / "seg.ome.zarr"), "--threads", "1",
                 "--quiet"]) == 0
    assert (tmp_path / "seg.ome.zarr" / "labels").is_dir()


# Failures: one clear error, from open_segmentation and as one line on the command line.

def _failing_urls(server, daskseg_seg):
    root, _ = server
    target = pydicom.dcmread(daskseg_seg[0], stop_before_pixels=True)
    missing = f"{root}/studies/{target.StudyInstanceUID}/series/{target.SeriesInstanceUID}/instances/1.2.3"
    with socket.socket() as s:  # a port that nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    down = f"http://127.0.0.1:{port}/dicom-web/studies/1.2/series/1.3/instances/1.4"
    return missing, down


def test_failures_of_open_segmentation(server, daskseg_seg):
    missing, down = _failing_urls(server, daskseg_seg)
    with pytest.raises(SegmentationInputError, match="404 Not Found"):
        open_segmentation(missing)
    with pytest.raises(DICOMwebError, match="Cannot connect"):
        open_segmentation(down)
    with tiny_server(None) as root:  # accepts connections, never answers
        start = time.monotonic()
        with pytest.raises(DICOMwebError, match="did not answer in time"):
            open_segmentation(f"{root}/studies/1.2/series/1.3/instances/1.4", timeout=(1, 1))
        assert time.monotonic() - start < 15
    with pytest.raises(SegmentationInputError, match="series URL"):
        open_segmentation(missing.rsplit("/instances/", 1)[0])
    with pytest.raises(SegmentationInputError, match="DICOMweb URLs only"):
        open_segmentation(daskseg_seg[0], headers={"Authorization": "Bearer x"})


def test_an_htj2k_seg_on_a_server_that_cannot_serve_its_frames_is_refused_clearly(
        server, tmp_path):
    """Orthanc 1.10 answers 500 when asked for HTJ2K frames as stored; the stored instance's
    file meta then says the syntax, and the refusal says to download the file."""
    root, log = server
    mask = np.zeros((128, 128), np.uint8)
    mask[10:90, 20:100] = 1
    mask[50:70, 60:120] = 2
    path = write_segmentation(mask, make_slide(128, 128, tile_size=(64, 64)),
                              make_segment_descriptions(2, segmentation_type="LABELMAP"),
                              tmp_path / "htj2k.dcm", segmentation_type="LABELMAP",
                              transfer_syntax_uid=HTJ2KLossless, progress=False)
    url = store(root, path)
    before = len(requests_seen(log))
    with pytest.raises(SegmentationInputError, match="High-Throughput.*download the instance"):
        open_segmentation(url)
    asked = requests_seen(log)[before:]
    assert asked[-1].endswith(url.rsplit("/studies/", 1)[1])  # the instance, after the frame


def test_failures_on_the_command_line(server, daskseg_seg, tmp_path, capsys):
    missing, down = _failing_urls(server, daskseg_seg)
    for url, message in ((missing, "404 Not Found"), (down, "Cannot connect")):
        for argv in (["info", url], ["decode", url, "-o", str(tmp_path / "x.zarr"), "--threads", "1"]):
            assert main(argv) == 1
            err = capsys.readouterr().err
            assert err.startswith("daskseg: error: ") and message in err and err.count("\n") == 1
    assert not (tmp_path / "x.zarr").exists()


def test_bearer_token_from_the_environment(monkeypatch, capsys):
    seen: list = []
    monkeypatch.setenv("DASKSEG_DICOMWEB_TOKEN", "tok-456")
    with tiny_server(401, seen) as root:
        assert main(["info", f"{root}/studies/1.2/series/1.3/instances/1.4"]) == 1
    assert seen and seen[0]["Authorization"] == "Bearer tok-456"
    assert "tok-456" not in capsys.readouterr().err


def test_credentials_reach_the_workers_requests(daskseg_seg, dask_client, tmp_path):
    """An Orthanc that wants a password: the URL's ``user:password@`` opens the SEG and reaches
    the frame requests of the worker processes, and no message or repr shows the password."""
    from _orthanc import run_orthanc

    path, url = daskseg_seg
    with run_orthanc(tmp_path / "orthanc", AuthenticationEnabled=True,
                     RegisteredUsers={"alice": "s3cret"}) as root:
        locked = root.replace("http://", "http://alice:s3cret@")
        store_instance(path, locked)
        tail = url.split("/dicom-web", 1)[1]
        with pytest.raises(DICOMwebError, match="refused access") as caught:
            open_segmentation(root + tail)
        assert caught.value.status == 401
        reader = open_segmentation(locked + tail)
        assert "s3cret" not in reader.path and "s3cret" not in repr(reader._source)
        got = dask_client.compute(reader.to_dask(combine_segments=True, chunks=128)).result(timeout=120)
        np.testing.assert_array_equal(got, read_segmentation(path, combine_segments=True).compute())


def test_server_gone_after_open_fails_the_tasks_clearly(daskseg_seg, dask_client, tmp_path):
    from _orthanc import run_orthanc

    path, url = daskseg_seg
    tail = url.split("/dicom-web", 1)[1]
    with run_orthanc(tmp_path / "orthanc") as root:
        store_instance(path, root)
        reader = open_segmentation(root + tail)
    # Orthanc has stopped: the frame requests of the worker processes cannot connect.
    with pytest.raises(DICOMwebError, match="Cannot connect") as caught:
        dask_client.compute(reader.to_dask(chunks=128)).result(timeout=120)
    assert caught.value.url and "/frames/" in caught.value.url


# --------------------------------------------------------------------------- SEGs of series

@pytest.fixture(scope="module")
def volume_segs(tmp_path_factory, server, dask_client):
    """SEGs of a shuffled oblique CT series (daskseg's and highdicom's) and of a multi-frame
    image, stored on Orthanc: {name: (path, url, source series or image)}."""
    from test_volume_write import enhanced_image, shuffled_series, volume_mask

    root, _ = server
    folder = tmp_path_factory.mktemp("volume-segs")
    series = shuffled_series()
    out = {}
    for kind, syntax in [("BINARY", ExplicitVRLittleEndian), ("BINARY", JPEG2000Lossless),
                         ("FRACTIONAL", JPEG2000Lossless), ("LABELMAP", ExplicitVRLittleEndian)]:
        path = write_segmentation(volume_mask(kind), series,
                                  make_segment_descriptions(3, segmentation_type=kind),
                                  folder / f"{kind}-{syntax}.dcm", segmentation_type=kind,
                                  transfer_syntax_uid=syntax, client=dask_client, progress=False)
        out[f"{kind}-{syntax.name}"] = (path, store(root, path), series)
    path = folder / "highdicom.dcm"
    hd.seg.Segmentation(series, volume_mask("BINARY"), "BINARY", make_segment_descriptions(3),
                        hd.UID(), 1, hd.UID(), 1, "x", "x", "1", "x").save_as(path)
    out["highdicom"] = (path, store(root, path), series)
    for columns in (24, 20):  # 1-bit rows of 20 columns do not fill whole bytes
        enhanced = enhanced_image(6, 24, columns)
        labels = np.zeros((6, 24, columns), np.uint8)
        labels[[0, 2, 5], 3:20, 2:17] = np.random.default_rng(5).integers(0, 4, (3, 17, 15))
        path = write_segmentation(labels, enhanced, make_segment_descriptions(3),
                                  folder / f"multiframe-{columns}.dcm", client=dask_client,
                                  progress=False)
        out[f"multiframe-{columns}"] = (path, store(root, path), enhanced)
    return out


def test_a_server_refusing_1_bit_frames_is_explained(volume_segs):
    """Orthanc refuses native 1-bit frames whose rows do not fill whole bytes (400); the error
    says so and what to do (the file reads)."""
    path, url, _ = volume_segs["multiframe-20"]
    with pytest.raises(DICOMwebError, match="multiple of 8.*download the instance") as caught:
        open_segmentation(url)
    assert caught.value.status == 400
    assert open_segmentation(path).to_dask(combine_segments=True).compute().any()


def test_volume_read_equals_the_file(server, volume_segs, dask_client):
    """A SEG of a series reads from its URL as from its file: planes, order, values, and only
    WADO-RS requests for the frames after the one metadata request."""
    from daskseg import VolumeSegmentationReader

    _, log = server
    for name, (path, url, source) in volume_segs.items():
        if name == "multiframe-20":
            continue  # refused by Orthanc: see test_a_server_refusing_1_bit_frames_is_explained
        from_file = open_segmentation(path)
        before = len(requests_seen(log))
        reader = open_segmentation(url)
        assert isinstance(reader, VolumeSegmentationReader), name
        opened = requests_seen(log)[before:]
        assert opened[0].endswith("/metadata") and len(opened) <= 2, (name, opened)
        assert reader.path == url and reader.segmentation_type == from_file.segmentation_type
        assert reader.source_sop_instance_uids == from_file.source_sop_instance_uids
        assert reader.source_frame_numbers == from_file.source_frame_numbers
        np.testing.assert_array_equal(reader.plane_positions(), from_file.plane_positions())
        # By default a chunk's frames fill a request (here all of them: one chunk), where a
        # file is read in at least 16 chunks (one plane each here).
        assert len(reader.to_dask().chunks[0]) == 1
        assert len(from_file.to_dask().chunks[0]) == len(from_file.source_sop_instance_uids) > 1
        before = len(requests_seen(log))
        reader.to_dask(combine_segments=reader.segmentation_type != "FRACTIONAL").compute()
        assert len(frame_requests(log, before)) == 1
        options = [{}, {"segment_numbers": [3, 1]}]
        if from_file.segmentation_type != "FRACTIONAL":
            options.append({"combine_segments": True})
        for option in options:
            before = len(requests_seen(log))
            got = dask_client.compute(reader.to_dask(chunks=2, **option)).result(timeout=120)
            np.testing.assert_array_equal(got, from_file.to_dask(**option).compute(),
                                          err_msg=f"{name} {option}")
            fetched = [n for batch in frame_requests(log, before) for n in batch]
            assert len(fetched) == len(set(fetched)), name  # each frame fetched once
            every = set(range(1, reader.number_of_frames + 1))
            # Segment 2's frames only when it is read (a label map's frames hold all).
            subset = "segment_numbers" in option and reader.segmentation_type != "LABELMAP"
            assert (set(fetched) == every) != subset, (name, option)
        if name == "multiframe-24":
            frames = [6, 2, 1, 9]
            np.testing.assert_array_equal(
                read_segmentation(url, source_frame_numbers=frames).compute(),
                read_segmentation(path, source_frame_numbers=frames).compute())
            continue
        # A plane asked for twice in one chunk: its frames are asked for once.
        twice = [*reader.source_sop_instance_uids[:2], reader.source_sop_instance_uids[0]]
        before = len(requests_seen(log))
        got = reader.to_dask(source_sop_instance_uids=twice, chunks=3).compute()
        np.testing.assert_array_equal(
            got, read_segmentation(path, source_sop_instance_uids=twice).compute())
        fetched = [n for batch in frame_requests(log, before) for n in batch]
        assert len(fetched) == len(set(fetched)), name
        # Every source image in the order given (omitted planes as zeros), as highdicom reads.
        uids = [ds.SOPInstanceUID for ds in source]
        combine = reader.segmentation_type != "FRACTIONAL"
        got = read_segmentation(url, source_sop_instance_uids=uids,
                                combine_segments=combine).compute()
        theirs = hd.seg.segread(path).get_pixels_by_source_instance(
            uids, combine_segments=combine, assert_missing_frames_are_empty=True)
        assert got.dtype == theirs.dtype
        np.testing.assert_array_equal(got, theirs, err_msg=name)


def test_volume_command_line(volume_segs, tmp_path, capsys):
    import nibabel

    path, url, _ = volume_segs["LABELMAP-Explicit VR Little Endian"]
    assert main(["info", url]) == 0
    out = capsys.readouterr().out
    assert f"url:             {url} (DICOMweb)" in out and "frame size:      32 x 40" in out
    for name, seg in (("web", url), ("file", str(path))):
        assert main(["decode", seg, "-o", str(tmp_path / f"{name}.nii.gz"), "--threads", "1",
                     "--quiet"]) == 0
    web, local = (nibabel.load(tmp_path / f"{name}.nii.gz") for name in ("web", "file"))
    np.testing.assert_array_equal(web.affine, local.affine)
    np.testing.assert_array_equal(np.asarray(web.dataobj), np.asarray(local.dataobj))
    assert np.asarray(web.dataobj).any()


def test_a_tiled_reader_refuses_a_volume_url(volume_segs):
    from daskseg import SegmentationFileError, SegmentationReader

    _, url, _ = volume_segs["highdicom"]
    with pytest.raises(SegmentationFileError, match="open_segmentation"):
        SegmentationReader(url)


# --------------------------------------------------------------------------- odd servers

@contextlib.contextmanager
def stub_server(routes):
    """A local HTTP server answering a GET whose path ends with a key of ``routes`` with its
    (status, content type, body); 404 otherwise. Plays servers and answers Orthanc never gives."""

    class Handler(http.server.BaseHTTPRequestHandler):
        def log_message(self, *args):
            pass

        def do_GET(self):  # noqa: N802 (http.server's name)
            path = self.path.split("?")[0]
            status, content_type, body = next(
                (answer for suffix, answer in routes.items() if path.endswith(suffix)),
                (404, "text/plain", b"not found"),
            )
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

    with serving(Handler) as root:
        yield root


@pytest.fixture(scope="module")
def volume_metadata(tmp_path_factory, thread_client):
    """A small BINARY JPEG 2000 SEG of a CT series: its URL path and its DICOM JSON."""
    from test_volume_write import shuffled_series, volume_mask

    path = write_segmentation(volume_mask("BINARY"), shuffled_series(),
                              make_segment_descriptions(3),
                              tmp_path_factory.mktemp("stub") / "seg.dcm",
                              transfer_syntax_uid=JPEG2000Lossless, client=thread_client)
    header = pydicom.dcmread(path, stop_before_pixels=True)
    return (f"/studies/{header.StudyInstanceUID}/series/{header.SeriesInstanceUID}/instances/"
            f"{header.SOPInstanceUID}"), header.to_json_dict()


def test_answers_that_are_not_dicom_json_are_dicomweb_errors(volume_metadata):
    """A login page, an empty list, a number: a DICOMwebError naming the URL, never
    requests' or dicomweb-client's own exceptions."""
    instance, _ = volume_metadata
    for content_type, body in [("text/html", b"<html>please log in</html>"),
                               ("application/dicom+json", b"[]"),
                               ("application/dicom+json", b"42")]:
        with stub_server({"/metadata": (200, content_type, body)}) as root:
            with pytest.raises(DICOMwebError, match="metadata") as caught:
                open_segmentation(root + instance)
            assert root + instance in str(caught.value), body


def test_transfer_syntax_refusals_keep_the_servers_words_or_fall_back(volume_metadata):
    """The server's reason reaches the message; a server that will not send frames as stored
    (406 to transfer-syntax=*) is asked for native frames, which it transcodes to; frames no
    DICOMweb media type names (HTJ2K) are refused when opened, naming the URL."""
    import json

    instance, metadata = volume_metadata
    as_json = json.dumps([metadata]).encode()
    words = json.dumps({"Message": "Unknown transfer syntax: 1.2.3"}).encode()
    with stub_server({"/metadata": (200, "application/dicom+json", as_json),
                      "/frames/1": (500, "application/json", words)}) as root:
        with pytest.raises(DICOMwebError, match="Unknown transfer syntax: 1.2.3"):
            open_segmentation(root + instance)
    with stub_server({"/metadata": (200, "application/dicom+json", as_json),
                      "/frames/1": (406, "text/plain", b"")}) as root:
        reader = open_segmentation(root + instance)
        assert reader.transfer_syntax_uid == ExplicitVRLittleEndian
    htj2k = json.dumps([{**metadata, "00020010": {"vr": "UI", "Value": [HTJ2KLossless]}}])
    with stub_server({"/metadata": (200, "application/dicom+json", htj2k.encode())}) as root:
        with pytest.raises(SegmentationInputError, match="High-Throughput.*download the "
                           "instance") as caught:
            open_segmentation(root + instance)
        assert root + instance in str(caught.value)


@pytest.mark.parametrize("option, value", [
    ("timeout", "60"), ("timeout", 0), ("timeout", (1, 2, 3)), ("headers", "Bearer x"),
    ("headers", {"X-Retry": 1}), ("session", object()),
])
def test_bad_request_options_are_type_errors(option, value):
    with pytest.raises(SegmentationTypeError, match=option):
        open_segmentation("http://127.0.0.1:9/dicom-web/studies/1/series/2/instances/3",
                          **{option: value})


def test_a_url_urllib_cannot_split_is_an_input_error():
    with pytest.raises(SegmentationInputError, match="not a DICOMweb URL") as caught:
        open_segmentation("http://user:secret@[::1/dicom-web/studies/1/series/2/instances/3")
    assert "secret" not in str(caught.value)


@settings(max_examples=10, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(case=slide_cases(), data=st.data())
def test_any_seg_on_the_server_reads_as_its_file(tmp_path_factory, server, case, data):
    """A SEG of any size, tile size, type x syntax and organization, stored on Orthanc, reads
    from its URL (any chunks, one region) as its file reads; or, where Orthanc cannot serve its
    frames (HTJ2K as stored; 1-bit frames whose rows do not fill whole bytes), a daskseg error
    that says to download the instance."""
    root, _ = server
    path = write_case(case, tmp_path_factory.mktemp("web") / "seg.dcm")
    url = store(root, path)
    rows, columns = case["labels"].shape
    combine = case["segmentation_type"] != "FRACTIONAL"
    chunks = (data.draw(st.integers(1, rows)), data.draw(st.integers(1, columns)))
    region = (slice(data.draw(st.integers(0, rows - 1)), None),
              slice(data.draw(st.integers(0, columns - 1)), None))
    bits = 1 if case["segmentation_type"] == "BINARY" else 8
    # Orthanc serves 1-bit frames (JPEG 2000 ones too: it decodes them for
    # application/octet-stream) only when their rows fill whole bytes.
    unservable = case["syntax"] == HTJ2KLossless or (bits == 1 and case["tile"][1] % 8 != 0)
    try:
        got = read_segmentation(url, combine_segments=combine, chunks=chunks)[region]
        got = got.compute(scheduler="threads")
    except (DICOMwebError, SegmentationInputError) as error:
        assert unservable and "download the instance" in str(error), error
        return
    assert case["syntax"] != HTJ2KLossless  # Orthanc 1.10 serves no HTJ2K frames as stored
    expected = read_segmentation(path, combine_segments=combine)[region].compute(
        scheduler="threads")
    assert got.dtype == expected.dtype
    np.testing.assert_array_equal(got, expected)


def test_native_1_bit_frames_of_another_length_are_refused(tmp_path):
    """A server that sends a native 1-bit frame unpacked (a byte a pixel), or with bytes more:
    a SegmentationFileError, not the frame cut to its first Rows x Columns bits."""
    import json

    source = make_slide(64, 64, tile_size=(64, 64))
    mask = np.zeros((64, 64), np.uint8)
    mask[8:40, 4:50] = 1
    path = write_segmentation(mask, source, make_segment_descriptions(1), tmp_path / "seg.dcm",
                              dimension_organization_type="TILED_FULL", client=None)
    header = pydicom.dcmread(path)
    stored = header.PixelData[: 64 * 64 // 8]
    instance = (f"/studies/{header.StudyInstanceUID}/series/{header.SeriesInstanceUID}/instances/"
                f"{header.SOPInstanceUID}")
    metadata = json.dumps([header.to_json_dict(
        bulk_data_threshold=1, bulk_data_element_handler=lambda element: "http://x/bulk")])
    content_type = (f'multipart/related; type="application/octet-stream"; '
                    f"transfer-syntax={ExplicitVRLittleEndian}; boundary=B")

    def routes(frame: bytes) -> dict:
        body = (b"--B\r\nContent-Type: application/octet-stream; transfer-syntax="
                + ExplicitVRLittleEndian.encode() + b"\r\n\r\n" + frame + b"\r\n--B--\r\n")
        return {"/metadata": (200, "application/dicom+json", metadata.encode()),
                "/frames/1": (200, content_type, body)}

    with stub_server(routes(stored)) as root:  # the frame as stored: read right
        np.testing.assert_array_equal(open_segmentation(root + instance).to_numpy()[..., 0], mask)
    unpacked = np.unpackbits(np.frombuffer(stored, np.uint8), bitorder="little").tobytes()
    for frame in (unpacked, stored + b"\xff" * 100):
        with stub_server(routes(frame)) as root:
            with pytest.raises(SegmentationFileError,
                               match=f"frame 1 came as {len(frame)} bytes, where a native frame "
                                     "of 64 x 64 pixels of 1 bits takes 512"):
                open_segmentation(root + instance).to_numpy()
