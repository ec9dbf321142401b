"""A SEG on a DICOMweb server as a frame source: the header from its metadata, frames by WADO-RS.

The reader fetches the instance's metadata once (the frame index needs only the per-frame
functional groups, no byte offsets); each task then asks for its own frames with
:func:`daskseg.dicomweb.fetch_frames`, many per request, and decodes them on its worker.

Credentials: the tasks carry the plain ``headers`` (a bearer token, say) and each worker process
builds its own ``requests.Session`` for them; a session given by the user is pickled into the
tasks (with its auth and cookies). Either way the credentials are in the task graph, so in
the memory of the scheduler and the workers of the cluster the read runs on (as any argument
of a task is), and never in a message or a task's name.
"""

from __future__ import annotations

import collections
import dataclasses
import functools
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, NamedTuple

from pydicom.dataset import Dataset
from pydicom.uid import UID, ExplicitVRLittleEndian

from daskseg._frames import HEADER_DAMAGE, FrameLayout, FrameRef, check_header, damaged_header
from daskseg._volframes import FrameItem, frame_items_from_json
from daskseg.dicomweb import (
    DEFAULT_TIMEOUT,
    FRAMES_PER_REQUEST,
    DICOMwebURL,
    _dataset_from_json,
    _fetch_metadata_json,
    _frame_media_type,
    _resolve,
    check_request_options,
    fetch_frames,
    fetch_transfer_syntax,
)
from daskseg.errors import DICOMwebError, SegmentationInputError

__all__ = ["WebHead", "WebSource", "open_web"]


@functools.lru_cache(maxsize=1)
def _worker_session() -> Any:
    """One HTTP session per process, so that a worker's tasks reuse its connections."""
    import requests

    return requests.Session()


@dataclass(frozen=True)
class WebSource:
    """Frames fetched with WADO-RS frame retrieval (small and picklable).

    ``headers`` and ``session`` are left out of ``repr`` so that they never reach a message.
    """

    target: DICOMwebURL
    headers: Mapping[str, str] = field(default_factory=dict, repr=False)
    session: Any = field(default=None, repr=False, compare=False)
    timeout: float | tuple[float, float] = DEFAULT_TIMEOUT
    frames_per_request: int = FRAMES_PER_REQUEST

    @property
    def path(self) -> str:
        """The instance URL, without credentials (names the SEG in messages)."""
        return str(self.target)

    @contextmanager
    def open(self) -> Iterator[WebSource]:
        yield self

    def frames(
        self, layout: FrameLayout, refs: Sequence[FrameRef]
    ) -> Iterator[tuple[FrameLayout, bytes]]:
        """Fetch the frames ``frames_per_request`` at a time, as they are consumed."""
        session = self.session if self.session is not None else _worker_session()
        target = self.target
        assert target.sop_instance_uid is not None
        # Each frame asked for once: a plane read twice (source_sop_instance_uids may repeat
        # one) would repeat its frames in a request, and a server may answer them once. A
        # frame is kept only until its last use.
        wanted = [index + 1 for index, _ in refs]
        uses = collections.Counter(wanted)
        # Asked for in ascending order: PS3.18 lets the request list frames in any order but
        # does not say that the answer follows it, and servers answer in ascending order.
        numbers = sorted(uses)
        fetched: dict[int, tuple[FrameLayout, bytes]] = {}
        position = 0
        for start in range(0, len(numbers), self.frames_per_request):
            batch = numbers[start:start + self.frames_per_request]
            syntax, data = fetch_frames(
                target.root, target.study_instance_uid, target.series_instance_uid,
                target.sop_instance_uid, batch,
                layout.transfer_syntax_uid, session=session, headers=self.headers,
                timeout=self.timeout, frames_per_request=self.frames_per_request,
            )
            # A server may send native frames instead of the stored syntax (fetch_frames' 406
            # fallback): decode those as native.
            got = layout if syntax == layout.transfer_syntax_uid else dataclasses.replace(
                layout, transfer_syntax_uid=syntax
            )
            fetched.update((number, (got, frame)) for number, frame in zip(batch, data))
            # In the order asked for, repeats included, as the frames are consumed.
            while position < len(wanted) and wanted[position] in fetched:
                number = wanted[position]
                yield fetched[number]
                uses[number] -= 1
                if not uses[number]:
                    del fetched[number]
                position += 1


class WebHead(NamedTuple):
    """What :func:`open_web` learns of a SEG: enough to make its reader."""

    header: Dataset
    layout: FrameLayout
    source: WebSource
    # The frame items of a SEG of a series or multi-frame image (then not in ``header``);
    # None for a SEG of a tiled image, whose per-frame items stay in ``header``.
    frame_items: list[FrameItem] | None


def open_web(
    url: str,
    *,
    session: Any = None,
    headers: Mapping[str, str] | None = None,
    timeout: float | tuple[float, float] | None = None,
) -> WebHead:
    """The SEG header at ``url`` (one metadata request, and one for the transfer syntax when the
    metadata lacks it), its frame layout, the source the tasks fetch frames from, and for a SEG
    of a series its frame items. ``timeout`` None: ``DEFAULT_TIMEOUT``."""
    timeout = DEFAULT_TIMEOUT if timeout is None else timeout
    check_request_options(session, headers, timeout)  # before the headers are merged
    target, all_headers = _resolve(url, headers)
    if target.sop_instance_uid is None:
        raise SegmentationInputError(
            f"{target} is a series URL; give the SEG instance's URL (.../instances/{{uid}})."
        )
    metadata = _fetch_metadata_json(target, session, all_headers, timeout)
    frame_items = None
    # A SEG of a series or multi-frame image (no total pixel matrix): its per-frame items are
    # read from the JSON as they are from a file, not made into thousands of Datasets.
    if "00480006" not in metadata and "00620002" in metadata:  # TotalPixelMatrixRows, SegmentSequence
        try:
            frame_items = frame_items_from_json(metadata)
        except HEADER_DAMAGE as error:
            raise damaged_header(str(target), error) from error
        metadata = {key: value for key, value in metadata.items() if key.upper() != "52009230"}
    try:
        header = _dataset_from_json(metadata)
    except HEADER_DAMAGE as error:
        raise damaged_header(str(target), error) from error
    tiled = frame_items is None
    rows, columns, bits = check_header(header, str(target), transfer_syntax=False, tiled=tiled)
    # PS3.5 8.1.1: native 1-bit frames that do not fill whole bytes start mid-byte in the Pixel
    # Data, and servers do not cut them out for frame retrieval (Orthanc answers 400).
    straddling = bits == 1 and rows * columns % 8 != 0
    unservable = SegmentationInputError(
        f"{target}: its 1-bit frames of {rows} x {columns} pixels do not fill whole bytes, "
        "which WADO-RS frame retrieval cannot serve; download the instance and read the file."
    )
    if "TransferSyntaxUID" not in header.file_meta:
        try:
            header.file_meta.TransferSyntaxUID = fetch_transfer_syntax(
                target, session=session, headers=all_headers, timeout=timeout
            )
        except DICOMwebError as error:
            if straddling and error.status == 400:
                raise unservable from None
            if bits == 1 and columns % 8 and error.status == 400:
                # Orthanc, for one, cuts native 1-bit frames out only when their rows fill
                # whole bytes ("Bad number of columns for a black-and-white image").
                raise DICOMwebError(
                    f"{str(error).rstrip('.')}. Servers may refuse to serve 1-bit frames of "
                    f"{columns} columns (Orthanc needs a multiple of 8); download the instance "
                    "and read the file.", url=error.url, status=error.status,
                ) from None
            if error.status != 406:
                raise
            # The server will not send frames as stored (transfer-syntax=*): ask for them
            # native, which it transcodes to, as fetch_frames does when a syntax is refused.
            header.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    check_header(header, str(target), tiled=tiled)
    try:
        _frame_media_type(str(header.file_meta.TransferSyntaxUID))
    except SegmentationInputError:
        raise SegmentationInputError(
            f"{target}: its frames are {UID(header.file_meta.TransferSyntaxUID).name}, which "
            "daskseg cannot ask a DICOMweb server for (dicomweb-client knows no media type for "
            "it); download the instance and read the file."
        ) from None
    if straddling and not UID(header.file_meta.TransferSyntaxUID).is_encapsulated:
        raise unservable
    layout = FrameLayout(
        transfer_syntax_uid=str(UID(header.file_meta.TransferSyntaxUID)),
        rows=rows,
        columns=columns,
        bits_allocated=bits,
        pixel_offset=0,  # frames are asked for by number, not read at an offset
    )
    # Plain headers travel with the tasks and each worker builds its own session; a session given
    # by the user is pickled into the tasks (it may hold credentials in its auth or cookies).
    source = WebSource(target, all_headers, session, timeout, _frames_per_request(layout))
    return WebHead(header, layout, source, frame_items)


# Bytes of frames, at their native size, asked for in one request. A server may parse the whole
# instance for every frame request: Orthanc takes 0.5 s a request for a 126 MB SEG of 3,777
# frames, whether it serves 1 frame or 1,024. Up to _MAX_FRAMES_PER_REQUEST frames keep the
# URL's frame list short (about 3 KB) for servers that limit URLs to 8 KB.
_BYTES_PER_REQUEST = 16 * 2**20
_MAX_FRAMES_PER_REQUEST = 512


def _frames_per_request(layout: FrameLayout) -> int:
    """Small frames (1-bit, or compressed) many to a request; at least FRAMES_PER_REQUEST."""
    frame_bytes = -(-layout.rows * layout.columns * layout.bits_allocated // 8)
    return max(FRAMES_PER_REQUEST, min(_MAX_FRAMES_PER_REQUEST, _BYTES_PER_REQUEST // frame_bytes))
