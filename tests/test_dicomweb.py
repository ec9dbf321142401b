"""DICOMweb against a real Orthanc on 127.0.0.1: STOW-RS, metadata, frame retrieval, failures."""

from __future__ import annotations

import contextlib
import json
import http.server
import socket
import threading
import time
from urllib.parse import urlsplit

import highdicom as hd
import imagecodecs
import numpy as np
import pydicom
import pytest
import requests
from distributed import Client
from pydicom.encaps import generate_frames
from pydicom.uid import ExplicitVRLittleEndian, JPEG2000Lossless

from daskseg import DICOMwebError, SegmentationInputError, write_segmentation
from daskseg._source import load_source_image
from daskseg.cli import main
from daskseg.dicomweb import (
    DICOMwebURL,
    fetch_frames,
    fetch_instance_metadata,
    fetch_transfer_syntax,
    is_dicomweb_url,
    parse_dicomweb_url,
    store_instance,
)
from daskseg.synthetic import make_segment_descriptions, make_slide, make_tissue_mask

pytest.importorskip("dicomweb_client")

ROWS, COLUMNS, TILE = 200, 300, 64  # 4 x 5 tiles, edge tiles on both axes
SYNTAXES = [ExplicitVRLittleEndian, JPEG2000Lossless]


class CountingAdapter(requests.adapters.HTTPAdapter):
    """Counts the HTTP requests a session sends (what the server sees)."""

    def __init__(self) -> None:
        super().__init__()
        self.urls: list[str] = []

    def send(self, request, **kwargs):
        self.urls.append(request.url)
        return super().send(request, **kwargs)


def counting_session() -> tuple[requests.Session, CountingAdapter]:
    session = requests.Session()
    adapter = CountingAdapter()
    session.mount("http://", adapter)
    return session, adapter


def instance_url(root: str, path) -> str:
    ds = pydicom.dcmread(path, stop_before_pixels=True)
    return f"{root}/studies/{ds.StudyInstanceUID}/series/{ds.SeriesInstanceUID}/instances/{ds.SOPInstanceUID}"


def file_frames(path) -> list[bytes]:
    """The encoded frames as the file holds them (native BINARY frames are bit-packed, PS3.5 8.1.1)."""
    ds = pydicom.dcmread(path)
    n = int(ds.NumberOfFrames)
    if ds.file_meta.TransferSyntaxUID.is_encapsulated:
        return list(generate_frames(ds.PixelData, number_of_frames=n))
    size = int(ds.Rows) * int(ds.Columns) // 8
    return [ds.PixelData[i * size:(i + 1) * size] for i in range(n)]


def decode(frame: bytes, syntax: str) -> np.ndarray:
    if pydicom.uid.UID(syntax).is_encapsulated:
        return imagecodecs.jpeg2k_decode(frame)
    return np.unpackbits(np.frombuffer(frame, np.uint8), bitorder="little").reshape(TILE, TILE)


@pytest.fixture(scope="module")
def thread_client():
    with Client(processes=False, n_workers=1, threads_per_worker=2, dashboard_address="127.0.0.1:0") as c:
        yield c


@pytest.fixture(scope="module")
def slide(tmp_path_factory, orthanc):
    """A slide header (no pixel data) stored on Orthanc, and its instance URL."""
    source = make_slide(ROWS, COLUMNS, tile_size=(TILE, TILE))
    path = tmp_path_factory.mktemp("slide") / "slide.dcm"
    source.save_as(path, enforce_file_format=True)
    store_instance(path, orthanc)
    return source, instance_url(orthanc, path)


@pytest.fixture(scope="module")
def stored(tmp_path_factory, orthanc, slide, thread_client):
    """SEGs written by daskseg (native and JPEG 2000) and stored with STOW-RS: syntax -> (path, URL)."""
    source, _ = slide
    folder = tmp_path_factory.mktemp("segs")
    mask = make_tissue_mask(ROWS, COLUMNS, 2, chunks=(97, 131))
    out = {}
    for syntax in SYNTAXES:
        path = write_segmentation(
            mask, source, make_segment_descriptions(2), folder / f"{syntax}.dcm",
            transfer_syntax_uid=syntax, client=thread_client, progress=False,
        )
        answer = store_instance(path, orthanc)
        sop = pydicom.dcmread(path, stop_before_pixels=True).SOPInstanceUID
        assert [item.ReferencedSOPInstanceUID for item in answer.ReferencedSOPSequence] == [sop]
        out[syntax] = (path, instance_url(orthanc, path))
    return out


def test_parse_urls():
    target, headers = parse_dicomweb_url(
        "https://user:s%40cret@pacs.example.org:8443/dicom-web/studies/1.2/series/1.3/instances/1.4"
    )
    assert target == DICOMwebURL("https://pacs.example.org:8443/dicom-web", "1.2", "1.3", "1.4")
    assert str(target) == "https://pacs.example.org:8443/dicom-web/studies/1.2/series/1.3/instances/1.4"
    assert headers["Authorization"] == requests.auth._basic_auth_str("user", "s@cret")
    series, headers = parse_dicomweb_url("http://h/studies/1.2/series/1.3/")
    assert series == DICOMwebURL("http://h", "1.2", "1.3", None) and headers == {}
    assert is_dicomweb_url("http://h/studies/1/series/2") and not is_dicomweb_url("slide.dcm")
    for bad in ("ftp://h/studies/1/series/2", "http://h/studies/1", "http://h/studies/1/series/2/frames/3",
                "http://h/studies//series/2", "http://u:secret@h/dicom-web/studies/1"):
        with pytest.raises(SegmentationInputError, match="not a DICOMweb URL") as caught:
            parse_dicomweb_url(bad)
        assert "secret" not in str(caught.value)
    # A query (an API key) would not go with the requests made from the root and the UIDs.
    with pytest.raises(SegmentationInputError, match="query or fragment") as caught:
        parse_dicomweb_url("http://h/dicom-web/studies/1/series/2/instances/3?key=secret")
    assert "secret" not in str(caught.value)


def test_metadata_bulk_data_is_left_empty_nested_too(recwarn):
    """Elements a server gives by BulkDataURI (Pixel Data, a large OB in a sequence) are
    empty in the Dataset made of the metadata, without asking for them or warning."""
    from daskseg.dicomweb import _dataset_from_json

    uri = {"vr": "OB", "BulkDataURI": "http://h/bulk/1"}
    item = {
        "00080018": {"vr": "UI", "Value": ["1.2.3"]},
        "00081140": {"vr": "SQ", "Value": [{"00081155": {"vr": "UI", "Value": ["1.2.4"]},
                                            "00091010": uri}]},
        "7FE00010": uri,
    }
    dataset = _dataset_from_json(item)
    assert dataset.SOPInstanceUID == "1.2.3" and "PixelData" not in dataset
    nested = dataset.ReferencedImageSequence[0]
    assert nested.ReferencedSOPInstanceUID == "1.2.4" and nested[0x00091010].value is None
    assert item["00081140"]["Value"][0]["00091010"] is uri  # the JSON is left as it was
    assert not recwarn.list


def test_frames_per_request_follows_the_frame_size():
    """Small frames many to a request (a server may parse the instance for each request)."""
    from daskseg._frames import FrameLayout
    from daskseg._web import _frames_per_request
    from daskseg.dicomweb import FRAMES_PER_REQUEST

    def layout(rows, columns, bits):
        return FrameLayout(str(JPEG2000Lossless), rows, columns, bits, 0)

    assert _frames_per_request(layout(512, 512, 1)) == 512  # 32 KiB each, 16 MiB a request
    assert _frames_per_request(layout(512, 512, 8)) == 64
    assert _frames_per_request(layout(4096, 4096, 16)) == FRAMES_PER_REQUEST  # never fewer
    assert _frames_per_request(layout(64, 64, 1)) == 512  # at most 512 frame numbers in a URL


@pytest.mark.parametrize("syntax", SYNTAXES, ids=["native", "jpeg2000"])
def test_frames_equal_the_files_frames(stored, syntax):
    path, url = stored[syntax]
    expected = file_frames(path)
    target, _ = parse_dicomweb_url(url)
    assert fetch_transfer_syntax(url) == syntax
    session, adapter = counting_session()
    numbers = [len(expected), 1, 3, 2, 5, 4, 7]  # any order, several per request
    got_syntax, frames = fetch_frames(
        target.root, target.study_instance_uid, target.series_instance_uid, target.sop_instance_uid,
        numbers, syntax, session=session, frames_per_request=3,
    )
    assert got_syntax == syntax
    assert len(adapter.urls) == 3 and all("/frames/" in u for u in adapter.urls)
    assert frames == [expected[n - 1] for n in numbers]
    pixels = pydicom.dcmread(path).pixel_array
    for n, frame in zip(numbers, frames):
        np.testing.assert_array_equal(decode(frame, got_syntax), pixels[n - 1])


def test_frames_fetched_on_a_worker_process(stored, dask_client):
    path, url = stored[JPEG2000Lossless]
    target, _ = parse_dicomweb_url(url)
    future = dask_client.submit(
        fetch_frames, target.root, target.study_instance_uid, target.series_instance_uid,
        target.sop_instance_uid, [2, 1], JPEG2000Lossless, pure=False,
    )
    syntax, frames = future.result(timeout=60)
    assert syntax == JPEG2000Lossless and frames == file_frames(path)[1::-1]


def test_metadata_holds_the_header_with_per_frame_groups(stored):
    path, url = stored[ExplicitVRLittleEndian]
    session, adapter = counting_session()
    ours = fetch_instance_metadata(url, session=session)
    assert len(adapter.urls) == 1
    theirs = pydicom.dcmread(path, stop_before_pixels=True)
    assert "PixelData" not in ours
    assert ours.SOPInstanceUID == theirs.SOPInstanceUID and ours.file_meta.MediaStorageSOPInstanceUID
    assert int(ours.NumberOfFrames) == int(theirs.NumberOfFrames)
    positions = [
        (int(item.PlanePositionSlideSequence[0].RowPositionInTotalImagePixelMatrix),
         int(item.PlanePositionSlideSequence[0].ColumnPositionInTotalImagePixelMatrix),
         int(item.SegmentIdentificationSequence[0].ReferencedSegmentNumber))
        for item in ours.PerFrameFunctionalGroupsSequence
    ]
    assert positions == [
        (int(item.PlanePositionSlideSequence[0].RowPositionInTotalImagePixelMatrix),
         int(item.PlanePositionSlideSequence[0].ColumnPositionInTotalImagePixelMatrix),
         int(item.SegmentIdentificationSequence[0].ReferencedSegmentNumber))
        for item in theirs.PerFrameFunctionalGroupsSequence
    ]
    assert [s.SegmentLabel for s in ours.SegmentSequence] == [s.SegmentLabel for s in theirs.SegmentSequence]


def test_source_header_from_the_server(slide, thread_client, tmp_path):
    source, url = slide
    header = load_source_image(url)
    assert header.SOPInstanceUID == source.SOPInstanceUID
    mask = make_tissue_mask(ROWS, COLUMNS, 1, chunks=(97, 131))
    uids = dict(series_instance_uid=hd.UID(), sop_instance_uid=hd.UID())
    written = [
        pydicom.dcmread(write_segmentation(
            mask, given, make_segment_descriptions(1), tmp_path / f"{name}.dcm",
            client=thread_client, progress=False, **uids,
        ))
        for name, given in (("from_url", url), ("from_dataset", source))
    ]
    from_url, from_dataset = written
    assert from_url.PixelData == from_dataset.PixelData
    for keyword in ("StudyInstanceUID", "PatientID", "FrameOfReferenceUID", "TotalPixelMatrixRows",
                    "TotalPixelMatrixColumns", "ContainerIdentifier"):
        assert from_url[keyword].value == from_dataset[keyword].value, keyword
    assert from_url.ReferencedSeriesSequence[0].ReferencedInstanceSequence[0].ReferencedSOPInstanceUID \
        == source.SOPInstanceUID
    assert from_url.SharedFunctionalGroupsSequence == from_dataset.SharedFunctionalGroupsSequence


def test_encode_then_stow_on_the_command_line(orthanc, slide, tmp_path, capsys):
    source, url = slide
    np.save(tmp_path / "mask.npy", make_tissue_mask(ROWS, COLUMNS, 1, chunks=(97, 131)).compute())
    out = tmp_path / "seg.dcm"
    assert main(["encode", str(tmp_path / "mask.npy"), url, "-o", str(out), "--label", "tissue",
                 "--stow", orthanc, "--threads", "1"]) == 0
    # It says where the instance is now, for `daskseg info` and `decode`.
    [stored] = [line for line in capsys.readouterr().out.splitlines() if "STOW-RS" in line]
    assert stored == f"stored {out} with STOW-RS: {instance_url(orthanc, out)}"
    header = fetch_instance_metadata(instance_url(orthanc, out))
    assert header.SegmentSequence[0].SegmentLabel == "tissue"
    assert header.ReferencedSeriesSequence[0].SeriesInstanceUID == source.SeriesInstanceUID


# Failures: each names the URL (without credentials) and comes back quickly.

def test_wrong_uid_is_an_input_error(stored, orthanc):
    _, url = stored[ExplicitVRLittleEndian]
    target, _ = parse_dicomweb_url(url)
    wrong = str(DICOMwebURL(orthanc, target.study_instance_uid, target.series_instance_uid, "1.2.3"))
    with pytest.raises(SegmentationInputError, match="404") as caught:
        fetch_instance_metadata(wrong)
    assert "instances/1.2.3" in str(caught.value)
    with pytest.raises(SegmentationInputError, match="404"):
        fetch_frames(target.root, target.study_instance_uid, target.series_instance_uid, "1.2.3",
                     [1], ExplicitVRLittleEndian)


def test_server_down(orthanc):
    with socket.socket() as s:  # a port that nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    url = f"http://someone:secret@127.0.0.1:{port}/dicom-web/studies/1.2/series/1.3/instances/1.4"
    start = time.monotonic()
    with pytest.raises(DICOMwebError, match="Cannot connect") as caught:
        fetch_instance_metadata(url)
    assert time.monotonic() - start < 10
    assert f"127.0.0.1:{port}/dicom-web" in str(caught.value) and "secret" not in str(caught.value)
    assert isinstance(caught.value, OSError)


@contextlib.contextmanager
def tiny_server(status: int | None, seen: list | None = None):
    """A local HTTP server answering every request with ``status``; None: accept, never answer."""

    class Handler(http.server.BaseHTTPRequestHandler):
        def log_message(self, *args):
            pass

        def answer(self):
            if seen is not None:
                seen.append(dict(self.headers))
            length = int(self.headers.get("Content-Length", 0))
            while length:  # drain the body so that the client sees the answer
                length -= len(self.rfile.read(min(length, 65536)))
            body = b'{"Message": "request body is limited to 1000 bytes"}'
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        do_GET = do_POST = answer

    if status is None:
        listener = socket.create_server(("127.0.0.1", 0))  # the kernel accepts; nobody reads
        try:
            yield f"http://127.0.0.1:{listener.getsockname()[1]}/dicom-web"
        finally:
            listener.close()
        return
    with serving(Handler) as root:
        yield root


@contextlib.contextmanager
def serving(handler):
    """An HTTP server on 127.0.0.1 with ``handler`` in a thread; yields its DICOMweb root."""
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/dicom-web"
    finally:
        server.shutdown()
        server.server_close()


def test_timeout_does_not_hang():
    with tiny_server(None) as root:
        start = time.monotonic()
        with pytest.raises(DICOMwebError, match="did not answer in time") as caught:
            fetch_frames(root, "1.2", "1.3", "1.4", [1, 2], ExplicitVRLittleEndian, timeout=(1, 1))
        assert time.monotonic() - start < 10
        assert root in str(caught.value)


def test_server_without_frame_retrieval():
    with tiny_server(501) as root:
        with pytest.raises(DICOMwebError, match="does not seem to offer WADO-RS frame retrieval"):
            fetch_frames(root, "1.2", "1.3", "1.4", [1], JPEG2000Lossless)


def test_credentials_reach_the_server_and_stay_out_of_messages():
    seen: list = []
    with tiny_server(401, seen) as root:
        with pytest.raises(DICOMwebError, match="refused access") as caught:
            fetch_instance_metadata(f"{root}/studies/1.2/series/1.3/instances/1.4",
                                    headers={"Authorization": "Bearer tok-123"})
    assert seen and seen[0]["Authorization"] == "Bearer tok-123"
    assert "tok-123" not in str(caught.value)
    assert "the credentials sent were refused" in str(caught.value)


def test_a_refusal_advises_credentials_only_when_none_were_sent():
    """No credentials: pass some. Credentials in the URL or a session, refused: check them
    (advice to pass what was passed misleads)."""
    instance = "/studies/1.2/series/1.3/instances/1.4"
    with tiny_server(401) as root:
        with pytest.raises(DICOMwebError, match="pass credentials as session= or headers="):
            fetch_instance_metadata(root + instance)
        for kwargs, url in [({}, root.replace("http://", "http://someone:wrong@") + instance),
                            ({"session": requests.Session()}, root + instance)]:
            if "session" in kwargs:
                kwargs["session"].auth = ("someone", "wrong")
            with pytest.raises(DICOMwebError,
                               match="the credentials sent were refused; check them") as caught:
                fetch_instance_metadata(url, **kwargs)
            assert "wrong" not in str(caught.value)


def test_a_source_slide_url_that_needs_credentials(tmp_path, monkeypatch, capsys):
    """write_segmentation takes no headers: its refusal says how to send credentials to the
    source's server. The command sends $DASKSEG_DICOMWEB_TOKEN with the source's request."""
    seen: list = []
    source = "/studies/1.2/series/1.3/instances/1.4"
    with tiny_server(401, seen) as root:
        with pytest.raises(DICOMwebError,
                           match="put user:password@ in the URL, or fetch it with "
                                 r"daskseg.dicomweb.fetch_instance_metadata\(url, headers="):
            load_source_image(root + source)
        mask = tmp_path / "mask.npy"
        np.save(mask, np.ones((64, 64), np.uint8))
        argv = ["encode", str(mask), root + source, "-o", str(tmp_path / "seg.dcm"),
                "--label", "tissue", "-q", "--threads", "1"]
        monkeypatch.delenv("DASKSEG_DICOMWEB_TOKEN", raising=False)
        assert main(argv) == 1
        assert "set $DASKSEG_DICOMWEB_TOKEN (a bearer token) or put user:password@ in the URL" in (
            capsys.readouterr().err)
        monkeypatch.setenv("DASKSEG_DICOMWEB_TOKEN", "tok-456")
        seen.clear()
        assert main(argv) == 1
        assert seen and all(h["Authorization"] == "Bearer tok-456" for h in seen)
        err = capsys.readouterr().err
        assert "the credentials sent were refused" in err and "tok-456" not in err


def test_an_https_url_of_a_plain_http_server_is_not_called_a_certificate_problem():
    with tiny_server(200) as root:
        url = root.replace("http://", "https://") + "/studies/1.2/series/1.3/instances/1.4"
        with pytest.raises(DICOMwebError, match="the TLS handshake failed .* does the server "
                                                "speak https at this address") as caught:
            fetch_instance_metadata(url, timeout=(5, 5))
        assert "certificate" not in str(caught.value)


def test_a_stow_root_of_another_scheme_is_refused_before_any_request(tmp_path):
    path = _small_seg(tmp_path)
    for root in ("ftp://127.0.0.1/dicom-web", "127.0.0.1:8042/dicom-web"):
        with pytest.raises(SegmentationInputError, match="is not a DICOMweb root: it starts "
                                                         "with http:// or https://"):
            store_instance(path, root)


def test_credentials_in_a_stow_root_are_sent_and_kept_out_of_messages(tmp_path):
    import base64

    seen: list = []
    with tiny_server(401, seen) as root:
        with_user = root.replace("http://", "http://someone:secret@")
        with pytest.raises(DICOMwebError, match="refused access") as caught:
            store_instance(_small_seg(tmp_path), with_user)
    assert seen[0]["Authorization"] == "Basic " + base64.b64encode(b"someone:secret").decode()
    assert "secret" not in str(caught.value)


def test_too_large_for_the_server(stored, tmp_path):
    path, _ = stored[ExplicitVRLittleEndian]
    size = path.stat().st_size
    seen: list = []
    with tiny_server(413, seen) as root:
        with pytest.raises(DICOMwebError, match="too large") as caught:
            store_instance(path, root)
    assert f"{size} bytes" in str(caught.value) and "limited to 1000 bytes" in str(caught.value)
    # Sent with its length, not chunked (which not every server takes): the file and the
    # multipart boundaries around it.
    assert "Transfer-Encoding" not in seen[0] and int(seen[0]["Content-Length"]) > size


def test_full_orthanc_storage_names_the_size(stored, tmp_path):
    from _orthanc import run_orthanc

    path, _ = stored[JPEG2000Lossless]
    # A storage area smaller than the instance (Orthanc counts MB; a 1 MB area holds nothing larger).
    big = tmp_path / "big.dcm"
    ds = pydicom.dcmread(path)
    ds.ContentDescription = "x" * 64
    ds.add_new(0x00091010, "OB", b"\0" * 1_200_000)  # a private element pads the file above 1 MB
    ds.save_as(big)
    with run_orthanc(tmp_path / "orthanc", MaximumStorageSize=1) as root:
        # Orthanc's plugin answers a body sent with its length with HTTP 200 and nothing
        # stored (a chunked one with HTTP 500, "storage is full"): either way, an error.
        with pytest.raises(DICOMwebError, match="storage is full|it was not stored") as caught:
            store_instance(big, root)
        assert f"{big.stat().st_size} bytes" in str(caught.value)
        with pytest.raises(SegmentationInputError, match="404"):  # nothing half-stored
            fetch_instance_metadata(instance_url(root, big))


def _send_frames(handler, frames):
    """Answer a frame request with ``frames`` as native parts of a multipart/related body."""
    body = b"".join(b"--b\r\nContent-Type: application/octet-stream\r\n\r\n" + frame + b"\r\n"
                    for frame in frames) + b"--b--\r\n"
    handler.send_response(200)
    handler.send_header("Content-Type",
                        'multipart/related; type="application/octet-stream"; boundary=b')
    handler.send_header("Content-Length", str(len(body)))
    handler.end_headers()
    handler.wfile.write(body)


def test_a_refused_syntax_is_asked_for_once_per_instance():
    """A server that answers 406 to the instance's own syntax is asked for native frames from
    then on: each task of a read used to ask for the syntax again, doubling the requests."""
    frames = [bytes([n]) * 16 for n in range(1, 7)]
    refused: list[str] = []

    class Handler(http.server.BaseHTTPRequestHandler):
        def log_message(self, *args):
            pass

        def do_GET(self):  # noqa: N802 (http.server's name)
            if "1.2.840.10008.1.2.4.90" in self.headers.get("Accept", ""):
                refused.append(self.path)
                self.send_response(406)
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            numbers = [int(n) for n in self.path.rsplit("/frames/", 1)[1].split(",")]
            _send_frames(self, [frames[n - 1] for n in numbers])

    with serving(Handler) as root:
        got = [fetch_frames(root, "1.2", "1.3", "1.4", batch, JPEG2000Lossless)
               for batch in ([1, 2], [3, 4], [5, 6])]
        other = fetch_frames(root, "1.2", "1.3", "1.5", [1], JPEG2000Lossless)
    assert [syntax for syntax, _ in got] == [ExplicitVRLittleEndian] * 3
    assert [frame for _, data in got for frame in data] == frames
    assert other == (ExplicitVRLittleEndian, frames[:1])
    # Once for the first instance, once for the other one: refusals are remembered per instance.
    assert [path.split("/frames/")[0].rsplit("/", 1)[1] for path in refused] == ["1.4", "1.5"]


def _small_seg(tmp_path):
    """A tiny SEG file written without a cluster (Dask's local scheduler)."""
    return write_segmentation(make_tissue_mask(64, 64, 1, chunks=32).compute(),
                              make_slide(64, 64, tile_size=(32, 32)), make_segment_descriptions(1),
                              tmp_path / "seg.dcm")


@contextlib.contextmanager
def stow_server(answer, seen=None, metadata_status=404):
    """A server answering every STOW-RS POST with ``answer`` (status, headers, body), and a
    metadata GET with ``metadata_status``; ``seen`` collects (method, path, headers)."""

    class Handler(http.server.BaseHTTPRequestHandler):
        def log_message(self, *args):
            pass

        def respond(self, status, headers, body):
            self.send_response(status)
            for name, value in {**headers, "Content-Length": str(len(body))}.items():
                self.send_header(name, value)
            self.end_headers()
            self.wfile.write(body)

        def do_POST(self):  # noqa: N802 (http.server's name)
            if seen is not None:
                seen.append(("POST", self.path, dict(self.headers)))
            length = int(self.headers.get("Content-Length", 0))
            while length:
                length -= len(self.rfile.read(min(length, 65536)))
            self.respond(*answer)

        def do_GET(self):  # noqa: N802
            if seen is not None:
                seen.append(("GET", self.path, dict(self.headers)))
            self.respond(metadata_status, {"Content-Type": "application/dicom+json"},
                         b"[{}]" if metadata_status == 200 else b"")

    with serving(Handler) as root:
        yield root


def test_stow_answers_are_believed_only_when_they_say_stored(tmp_path):
    """A redirect (to a login page, say) is not followed and is an error naming where it
    pointed; an error of the server's own JSON is the HTTP error; an answer that is not DICOM
    JSON is checked against the server's metadata of the instance."""
    path = _small_seg(tmp_path)
    for status in (302, 303, 307, 308):
        seen: list = []
        with stow_server((status, {"Location": "http://login.example/sso"}, b""), seen) as root:
            with pytest.raises(DICOMwebError, match=f"HTTP {status}, redirecting to "
                               "http://login.example/sso.*nothing was stored"):
                store_instance(path, root, headers={"X-Api-Key": "k"})
        assert [method for method, _, _ in seen] == ["POST"]  # not followed
    google = json.dumps({"error": {"code": 403, "message": "denied"}}).encode()
    with stow_server((403, {"Content-Type": "application/json"}, google)) as root:
        with pytest.raises(DICOMwebError, match="refused access .403."):
            store_instance(path, root)
    xml = b"<NativeDicomModel><DicomAttribute tag='0008A700'/></NativeDicomModel>"
    for body, headers in ((xml, {"Content-Type": "application/dicom+xml"}), (b"", {})):
        with stow_server((200, headers, body)) as root:
            with pytest.raises(DICOMwebError, match="cannot be found there: it was not stored"):
                store_instance(path, root)
        with stow_server((200, headers, body), metadata_status=200) as root:
            assert store_instance(path, root) == pydicom.Dataset()
    with pytest.raises(SegmentationInputError, match="no query string"):
        store_instance(path, "http://127.0.0.1:9/dicomWeb?key=abc")


def test_credentials_stay_with_the_client_they_were_given_to(tmp_path):
    """dicomweb-client writes its headers into its session: a worker's shared one carried one
    server's token to the next server, and a user's session kept it."""
    import requests

    from daskseg._web import _worker_session

    seen: list = []
    shared = _worker_session()  # as a worker's tasks share it
    with stow_server((404, {}, b""), seen) as root:
        url = f"{root}/studies/1.2/series/1.3/instances/1.4"
        with pytest.raises(SegmentationInputError):
            fetch_frames(root, "1.2", "1.3", "1.4", [1], ExplicitVRLittleEndian,
                         session=shared, headers={"Authorization": "Bearer A"})
        with pytest.raises(SegmentationInputError):
            fetch_frames(root, "1.2", "1.3", "1.4", [1], ExplicitVRLittleEndian, session=shared)
        session = requests.Session()
        with pytest.raises(SegmentationInputError):
            fetch_instance_metadata(url, session=session, headers={"Authorization": "Bearer B"})
    assert [headers.get("Authorization") for _, _, headers in seen] == ["Bearer A", None,
                                                                       "Bearer B"]
    assert "Authorization" not in session.headers


def test_an_untrusted_certificate_is_named():
    import requests

    from daskseg.dicomweb import _raise_for

    with pytest.raises(DICOMwebError, match="TLS certificate could not be verified.*"
                       "REQUESTS_CA_BUNDLE"):
        _raise_for(requests.exceptions.SSLError("self-signed certificate"),
                   "https://pacs.example/dicom-web/studies", "fetching metadata")
    # A read that times out as the answer streams in comes wrapped in a ConnectionError:
    # the server is there and stopped sending, not unreachable.
    from urllib3.exceptions import ReadTimeoutError

    stalled = requests.exceptions.ConnectionError(
        ReadTimeoutError(None, "https://pacs.example", "Read timed out."))
    with pytest.raises(DICOMwebError, match="did not answer in time while fetching metadata"):
        _raise_for(stalled, "https://pacs.example/dicom-web/studies", "fetching metadata")
    # An answer cut short is said to be one, not "is it a DICOMweb server?".
    with pytest.raises(DICOMwebError, match="the answer was cut short while fetching 2 frames"):
        _raise_for(requests.exceptions.ChunkedEncodingError("IncompleteRead(10 bytes read)"),
                   "https://pacs.example/dicom-web/studies/1/frames/1,2", "fetching 2 frames")


def test_frames_are_asked_for_in_ascending_order():
    """PS3.18 lets a request list frames in any order, but not that the answer follows it:
    servers answer in ascending order, which gave frames to the wrong planes."""
    from daskseg._frames import FrameLayout
    from daskseg._web import WebSource

    frames = {n: bytes([n]) * 16 for n in range(1, 10)}
    paths: list[str] = []

    class Handler(http.server.BaseHTTPRequestHandler):
        def log_message(self, *args):
            pass

        def do_GET(self):  # noqa: N802 (http.server's name)
            paths.append(self.path)
            numbers = sorted(int(n) for n in self.path.rsplit("/frames/", 1)[1].split(","))
            _send_frames(self, [frames[n] for n in numbers])

    layout = FrameLayout(ExplicitVRLittleEndian, 4, 4, 8, 0)
    with serving(Handler) as root:
        source = WebSource(DICOMwebURL(root, "1.2", "1.3", "1.4"))
        got = [data for _, data in source.frames(layout, [(6, []), (0, []), (3, []), (6, [])])]
    assert got == [frames[7], frames[1], frames[4], frames[7]]
    assert paths == [f"{urlsplit(root).path}/studies/1.2/series/1.3/instances/1.4/frames/1,4,7"]


def test_a_transfer_syntax_named_only_in_the_part_is_found():
    """Some servers name the frames' syntax in the part's headers only (PS3.18 8.7.3.5.2)."""

    class Handler(http.server.BaseHTTPRequestHandler):
        def log_message(self, *args):
            pass

        def do_GET(self):  # noqa: N802 (http.server's name)
            body = (b"--b\r\nContent-Type: application/octet-stream; transfer-syntax="
                    + JPEG2000Lossless.encode() + b"\r\n\r\n" + b"\0" * 64 + b"\r\n--b--\r\n")
            self.send_response(200)
            self.send_header("Content-Type", "multipart/related; boundary=b")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

    with serving(Handler) as root:
        url = f"{root}/studies/1.2/series/1.3/instances/1.4"
        assert fetch_transfer_syntax(url) == JPEG2000Lossless


def test_a_store_with_warnings_says_so(tmp_path):
    """202 Accepted with WarningReason 0xB000 (PS3.18 10.5.3): stored, but the server changed
    values; a UserWarning says so, and a plain 200 says nothing."""
    import warnings

    path = _small_seg(tmp_path)
    uid = pydicom.dcmread(path, stop_before_pixels=True).SOPInstanceUID
    item = {"00081155": {"vr": "UI", "Value": [uid]}}
    warned = {"00081199": {"vr": "SQ", "Value": [{**item, "00081196": {"vr": "US",
                                                                       "Value": [0xB000]}}]}}
    json_type = {"Content-Type": "application/dicom+json"}
    with stow_server((202, json_type, json.dumps(warned).encode())) as root:
        with pytest.warns(UserWarning, match="with warnings .HTTP 202, reason 0xB000"):
            answer = store_instance(path, root)
    assert answer.ReferencedSOPSequence[0].ReferencedSOPInstanceUID == uid
    plain = {"00081199": {"vr": "SQ", "Value": [item]}}
    with stow_server((200, json_type, json.dumps(plain).encode())) as root:
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            store_instance(path, root)


def test_answers_retried_to_the_end_say_the_status_and_that_they_were_retried():
    """dicomweb-client retries 408, 429, 503 and 504 and then raises its RetryError: that was
    'an answer daskseg cannot read' with no .status (a helper's hunt)."""
    for status in (503, 429):
        seen: list = []
        with tiny_server(status, seen) as root:
            url = f"{root}/studies/1.2/series/1.3/instances/1.4"
            with pytest.raises(DICOMwebError, match=f"answered HTTP {status} .* while fetching "
                                                    r"the instance's metadata.*\(tried 3 times\)") as caught:
                fetch_instance_metadata(url)
            assert caught.value.status == status and len(seen) == 3
            with pytest.raises(DICOMwebError, match=r"fetching 2 frames.*\(tried 3 times\)") as caught:
                fetch_frames(root, "1.2", "1.3", "1.4", [1, 2], JPEG2000Lossless)
            assert caught.value.status == status


def test_the_transfer_syntax_probe_is_tried_again_after_a_passing_failure():
    """The probe of frame 1 (every open on a server whose metadata lacks the syntax, as
    Orthanc's does) was sent once: one 503, or a connection refused, failed the open."""
    seen: list = []

    class Handler(http.server.BaseHTTPRequestHandler):
        def log_message(self, *args):
            pass

        def do_GET(self):  # noqa: N802 (http.server's name)
            seen.append(self.path)
            if len(seen) == 1:
                self.send_response(503)
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            body = b"--x\r\nContent-Type: application/octet-stream\r\n\r\n\x00\r\n--x--\r\n"
            self.send_response(200)
            self.send_header("Content-Type", "multipart/related; boundary=x; "
                             f'type="image/jp2"; transfer-syntax={JPEG2000Lossless}')
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

    with serving(Handler) as root:
        syntax = fetch_transfer_syntax(f"{root}/studies/1.2/series/1.3/instances/1.4")
    assert syntax == JPEG2000Lossless and len(seen) == 2


def test_a_stow_root_s_password_stays_out_of_the_check_that_follows_an_answer_not_in_json(
        tmp_path):
    """An answer that is not DICOM JSON is checked by the instance's metadata: that request was
    made of the root with its user:password@, which then stood in the error (a helper's
    hunt). It goes as HTTP Basic authentication, as the STOW request's."""
    import base64

    seen: list = []
    with stow_server((200, {"Content-Type": "text/xml"}, b"<ok/>"), seen) as root:
        with_user = root.replace("http://", "http://someone:secret@")
        with pytest.raises(DICOMwebError, match="cannot be found there") as caught:
            store_instance(_small_seg(tmp_path), with_user)
    assert "secret" not in str(caught.value)
    basic = "Basic " + base64.b64encode(b"someone:secret").decode()
    gets = [headers for method, _, headers in seen if method == "GET"]
    assert gets and all(headers.get("Authorization") == basic for headers in gets)
