"""DICOMweb: instance URLs, metadata, frame retrieval (WADO-RS) and storage (STOW-RS).

The reader and the writer call these functions; nothing here knows a SEG's frame layout.

- :func:`parse_dicomweb_url` splits ``{root}/studies/{study}/series/{series}[/instances/{sop}]``.
- :func:`fetch_instance_metadata` turns an instance's DICOM JSON into a pydicom Dataset (no pixel
  data), usable as a SEG's header or as the source image of ``write_segmentation``.
- :func:`fetch_transfer_syntax` asks the server how the frames are stored (not in DICOM JSON).
- :func:`fetch_frames` is the function the workers run: one or more WADO-RS frame requests, the
  encoded frames returned as bytes so that decoding stays on the worker.
- :func:`store_instance` sends a DICOM file with STOW-RS, streamed from disk.

Credentials travel as a ``requests.Session`` or as headers (a bearer token), never inside the URLs
this module prints: every message names the URL without user, password or query string.
Every request has a timeout, so a server that stops answering fails instead of hanging. Metadata
and frame requests go through dicomweb-client, which retries any failure (timeouts, refused
connections, 429 and 5xx answers); they are tried at most ``_ATTEMPTS`` times, so a server that
never answers fails after about ``_ATTEMPTS`` x the read timeout. STOW-RS is sent once (a body of
GB is not resent blindly).
"""

from __future__ import annotations

import io
import os
import pathlib
import re
import time
import uuid
import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import IO, Any, TypeVar
from urllib.parse import unquote, urlsplit, urlunsplit

import pydicom
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import UID, ExplicitVRLittleEndian

from daskseg._frames import FILE_META_READ_BYTES, file_meta_transfer_syntax
from daskseg.errors import (
    DaskSegError,
    DICOMwebError,
    MissingDependencyError,
    SegmentationFileError,
    SegmentationInputError,
    SegmentationTypeError,
)

__all__ = [
    "DEFAULT_TIMEOUT",
    "DICOMwebURL",
    "fetch_frames",
    "fetch_instance_metadata",
    "fetch_transfer_syntax",
    "is_dicomweb_url",
    "parse_dicomweb_url",
    "store_instance",
]

#: (connect, read) seconds for every request, as ``requests`` takes them.
DEFAULT_TIMEOUT: tuple[float, float] = (5.0, 60.0)

_ATTEMPTS = 3

#: Frames asked for in one WADO-RS request (PS3.18 10.4.1.1.5: a comma-separated frame list).
FRAMES_PER_REQUEST = 64

# The media type of a frame in each transfer syntax, as dicomweb-client names them (PS3.18 8.7.3.5).
_NATIVE = "application/octet-stream"

# Instances (URL, transfer syntax) whose server refused to send frames in that syntax (406): in
# this process later frame requests for them ask for native frames at once, instead of one
# refused request per task. Bounded: a long pipeline reads many SEGs.
_REFUSED_SYNTAXES: set[tuple[str, str]] = set()
_MAX_REFUSED = 4096
_COMPRESSED_MEDIA_TYPES = {
    "image/jp2": {"1.2.840.10008.1.2.4.90", "1.2.840.10008.1.2.4.91"},
    "image/jls": {"1.2.840.10008.1.2.4.80", "1.2.840.10008.1.2.4.81"},
    "image/dicom-rle": {"1.2.840.10008.1.2.5"},
    "image/jpeg": {"1.2.840.10008.1.2.4.50", "1.2.840.10008.1.2.4.51", "1.2.840.10008.1.2.4.57",
                   "1.2.840.10008.1.2.4.70"},
}


@dataclass(frozen=True)
class DICOMwebURL:
    """A DICOMweb series or instance: the service root and the UIDs below it.

    ``root`` never holds credentials; ``str()`` gives the URL as safe to print.
    """

    root: str
    study_instance_uid: str
    series_instance_uid: str
    sop_instance_uid: str | None = None

    def __str__(self) -> str:
        url = f"{self.root}/studies/{self.study_instance_uid}/series/{self.series_instance_uid}"
        if self.sop_instance_uid is not None:
            url += f"/instances/{self.sop_instance_uid}"
        return url


def _redact(url: str) -> str:
    """The URL without user, password, query or fragment: safe in a message."""
    try:
        parts = urlsplit(url)
        host = parts.hostname or ""
        if parts.port is not None:
            host += f":{parts.port}"
    except ValueError:  # a URL urllib cannot split: cut out what may hold credentials
        return re.sub(r"//[^/]*@", "//", url).split("?")[0].split("#")[0]
    return urlunsplit((parts.scheme, host, parts.path, "", ""))


def is_dicomweb_url(value: object) -> bool:
    """Whether ``value`` is an http(s) URL of a DICOMweb series or instance."""
    if not isinstance(value, str) or not value.lower().startswith(("http://", "https://")):
        return False
    try:
        return "/studies/" in urlsplit(value).path
    except ValueError:  # "Invalid IPv6 URL": an http URL all the same, refused by the parser
        return "/studies/" in value


def parse_dicomweb_url(url: str) -> tuple[DICOMwebURL, dict[str, str]]:
    """Split a WADO-RS series or instance URL into its root and UIDs.

    Parameters
    ----------
    url : str
        ``{root}/studies/{study}/series/{series}`` or ``.../instances/{sop}``, http or https.

    Returns
    -------
    DICOMwebURL
        The root (without credentials) and the UIDs.
    dict
        Headers carrying credentials found in the URL (``user:password@`` becomes HTTP Basic
        authentication), empty when it had none.

    Raises
    ------
    SegmentationInputError
        If the URL is not of that form.
    """
    try:
        parts = urlsplit(url)
        hostname = parts.hostname  # checks the brackets of an IPv6 address
        port = parts.port  # and that a port is a number below 65536
    except ValueError as error:  # urllib's verdict: "Invalid IPv6 URL", a bad port
        raise SegmentationInputError(
            f"{_redact(url)} is not a DICOMweb URL: {error}."
        ) from None
    segments = [unquote(s) for s in parts.path.rstrip("/").split("/")]
    try:
        at = len(segments) - 1 - segments[::-1].index("studies")
    except ValueError:
        at = -1
    tail = segments[at:] if at >= 0 else []
    if (
        parts.scheme.lower() not in ("http", "https")
        or not hostname
        or len(tail) not in (4, 6)
        or tail[2] != "series"
        or (len(tail) == 6 and tail[4] != "instances")
        or not all(tail[1::2])
    ):
        raise SegmentationInputError(
            f"{_redact(url)} is not a DICOMweb URL: expected "
            "{root}/studies/{study}/series/{series}[/instances/{sop}] over http or https."
        )
    if parts.query or parts.fragment:
        # The requests are built from the root and the UIDs; a query (an API key, say) would
        # silently not go with them.
        raise SegmentationInputError(
            f"{_redact(url)} has a query or fragment ('?...', '#...'), which daskseg does not "
            "send with its requests: pass such credentials as headers= (or a session=; on "
            "the command line, a bearer token in $DASKSEG_DICOMWEB_TOKEN)."
        )
    host = str(hostname) + (f":{port}" if port is not None else "")
    root = urlunsplit((parts.scheme, host, "/".join(segments[:at]), "", ""))
    headers = {}
    if parts.username is not None:
        from requests.auth import _basic_auth_str

        headers["Authorization"] = _basic_auth_str(unquote(parts.username), unquote(parts.password or ""))
    target = DICOMwebURL(root, tail[1], tail[3], tail[5] if len(tail) == 6 else None)
    return target, headers


def check_request_options(session: Any, headers: Any, timeout: Any) -> None:
    """Refuse ``session``, ``headers`` and ``timeout`` that requests would fail on later, in
    its own words: a session is a ``requests.Session``, headers a mapping of strings, a
    timeout a positive number of seconds or a (connect, read) pair of them."""
    if session is not None and not callable(getattr(session, "request", None)):
        raise SegmentationTypeError(
            f"session must be a requests.Session, not {type(session).__name__}."
        )
    if headers is not None and (not isinstance(headers, Mapping) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in headers.items()
    )):
        raise SegmentationTypeError(
            "headers must be a mapping of header names to strings, e.g. "
            "{'Authorization': 'Bearer ...'}."
        )
    values = timeout if isinstance(timeout, tuple) else (timeout,)
    if len(values) not in (1, 2) or not all(
        isinstance(v, (int, float)) and not isinstance(v, bool) and v > 0 for v in values
    ):
        raise SegmentationTypeError(
            f"timeout must be seconds (a positive number) or a (connect, read) pair of them, "
            f"not {timeout!r}."
        )


def _client(root: str, session, headers: Mapping[str, str] | None, timeout):
    """A dicomweb-client for ``root``, with few quick retries (the errors come back to the user)."""
    check_request_options(session, headers, timeout)
    try:
        from dicomweb_client import DICOMwebClient
    except ImportError as error:
        raise MissingDependencyError(
            "DICOMweb needs dicomweb-client: pip install 'daskseg[dicomweb]'"
        ) from error
    client = DICOMwebClient(root, session=_own_session(session),
                            headers=dict(headers or {}) or None, timeout=timeout)
    # 429 and 503 are retried by dicomweb-client with exponential waits; keep the total short.
    client.set_http_retry_params(max_attempts=_ATTEMPTS, wait_exponential_multiplier=200)
    return client


def _own_session(session: Any) -> Any:
    """A session for one dicomweb-client, with ``session``'s settings and connections.

    dicomweb-client writes the headers it is given (a bearer token) into its session: into the
    user's, or into the one a worker shares between its tasks, whose later requests to any
    server then carried them. This one is its own; it shares the connection pools, the cookie
    jar and the authentication of ``session``, and copies its headers and options.
    """
    import requests

    own = requests.Session()
    if session is None:
        return own
    own.headers = requests.structures.CaseInsensitiveDict(session.headers)
    own.auth = session.auth
    own.cookies = session.cookies
    own.verify, own.cert = session.verify, session.cert
    own.proxies = dict(session.proxies)
    own.params = dict(session.params)
    own.trust_env, own.max_redirects = session.trust_env, session.max_redirects
    own.adapters = session.adapters  # the connection pools, reused
    return own


def _raise_for(
    error: Exception, url: str, what: str, hint: str = "is it running and is the URL right?",
    *, headers: Mapping[str, str] | None = None, session: Any = None,
) -> None:
    """Turn a requests failure into a daskseg error naming ``url`` (without credentials).

    ``headers`` and ``session`` are the request's: whether they carried credentials tells a
    refusal's advice.
    """
    import requests

    url = _redact(url)
    error, tried = _last_attempt(error)
    # A read that times out while the answer streams in comes as a ConnectionError wrapping
    # urllib3's ReadTimeoutError: the server is there, and stopped sending.
    if isinstance(error, requests.Timeout) or (
            isinstance(error, requests.ConnectionError) and "ReadTimeoutError" in repr(error)):
        raise DICOMwebError(f"{url} did not answer in time while {what} ({error.__class__.__name__}).",
                            url=url) from None
    if (isinstance(error, requests.exceptions.SSLError)
            and "certificate" not in str(error).lower()):
        # Not the certificate: the handshake itself (an http:// server at an https:// URL).
        reason = re.search(r"\[SSL: \w+\] [^(')\"]+", str(error))
        raise DICOMwebError(
            f"{url}: the TLS handshake failed while {what} "
            f"({reason.group(0).strip() if reason else type(error).__name__}): does the server "
            "speak https at this address, or is it an http:// URL?", url=url) from None
    if isinstance(error, requests.exceptions.SSLError):
        raise DICOMwebError(
            f"{url}: the server's TLS certificate could not be verified while {what} (a "
            "self-signed or private certificate authority?): set REQUESTS_CA_BUNDLE to the CA "
            "file, or pass a requests session whose verify= names it.", url=url) from None
    if isinstance(error, requests.ConnectionError):
        raise DICOMwebError(f"Cannot connect to the DICOMweb server at {url} while {what}: {hint}",
                            url=url) from None
    if isinstance(error, requests.HTTPError) and error.response is not None:
        status = error.response.status_code
        if status == 404:
            raise SegmentationInputError(
                f"{url} answered 404 Not Found while {what}: check the UIDs in the URL."
            ) from None
        if status in (401, 403):
            raise DICOMwebError(f"{url} refused access ({status}) while {what}: "
                                f"{_credentials_advice(headers, session)}", url=url,
                                status=status) from None
        raise DICOMwebError(f"{url} answered HTTP {status} {error.response.reason} while {what}"
                            f"{_server_message(error.response)}{tried}.", url=url,
                            status=status) from None
    if isinstance(error, DaskSegError):
        raise error
    if isinstance(error, requests.exceptions.ChunkedEncodingError) or (
            "IncompleteRead" in type(error).__name__ + repr(error)):
        raise DICOMwebError(
            f"{url}: the answer was cut short while {what} (the connection closed before the "
            "server sent all it announced); try again, or ask the server's operators.",
            url=url) from None
    # An answer that is not what was asked for (a login page, an empty list, no multipart):
    # dicomweb-client's and requests' parsing errors.
    raise DICOMwebError(
        f"{url} gave an answer daskseg cannot read while {what} ({type(error).__name__}: "
        f"{' '.join(str(error).split())[:200]}): is it a DICOMweb server, and is the URL right?",
        url=url,
    ) from error


def _last_attempt(error: Exception) -> tuple[Exception, str]:
    """dicomweb-client's ``RetryError`` (its retries of 408, 429, 503 and 504 all failed) as the
    last attempt's error (its answer as an ``HTTPError``), and words saying it was retried."""
    import requests

    attempt = getattr(error, "last_attempt", None)
    if attempt is None or type(error).__name__ != "RetryError":
        return error, ""
    tried = f" (tried {attempt.attempt_number} times)"
    if attempt.has_exception:
        return attempt.value[1], tried
    if isinstance(attempt.value, requests.Response):
        return requests.HTTPError(str(attempt.value.status_code), response=attempt.value), tried
    return error, ""


# The answers dicomweb-client retries (its default), retried here too where daskseg asks itself.
_RETRIED_STATUSES = frozenset({408, 429, 503, 504})

_T = TypeVar("_T")


def _retried(call: Callable[[], _T], statuses: frozenset[int] = frozenset()) -> _T:
    """``call()`` (a request daskseg makes itself, not through dicomweb-client, which retries
    its own), tried up to ``_ATTEMPTS`` times while it cannot connect, times out, or is answered
    one of ``statuses``, as dicomweb-client's are; waiting 0.2 s, then 0.4 s."""
    import requests

    for attempt in range(_ATTEMPTS - 1):
        try:
            return call()
        except requests.RequestException as error:
            response = getattr(error, "response", None)
            transient = (
                isinstance(error, (requests.Timeout, requests.ConnectionError))
                and not isinstance(error, requests.exceptions.SSLError)
            ) or (response is not None and response.status_code in statuses)
            if not transient:
                raise
        time.sleep(0.2 * 2**attempt)
    return call()  # the last attempt: its error is the caller's


def _credentials_advice(headers: Mapping[str, str] | None, session: Any) -> str:
    """What to do about a refusal (401, 403): the credentials sent were wrong, or none went."""
    sent = any(key.lower() == "authorization" for key in (headers or {})) or (
        session is not None and (getattr(session, "auth", None) is not None
                                 or "Authorization" in getattr(session, "headers", {})))
    if sent:
        return "the credentials sent were refused; check them (user name and password, token)."
    return "pass credentials as session= or headers=."


def _server_message(response) -> str:
    """': <the server's own words>' from an error response, or nothing (Orthanc sends JSON)."""
    try:
        payload = response.json()
        text = payload.get("Details") or payload.get("Message") or ""
    except (ValueError, AttributeError):
        text = response.text if "text" in response.headers.get("Content-Type", "") else ""
    text = " ".join(str(text).split())[:300]
    return f": {text}" if text else ""


def _without_bulk_data(item: dict) -> dict:
    """A DICOM JSON object whose elements given by BulkDataURI are left empty, nested too."""
    out = {}
    for key, element in item.items():
        if isinstance(element, dict):
            if "BulkDataURI" in element:
                element = {k: v for k, v in element.items() if k != "BulkDataURI"}
            elif element.get("vr") == "SQ" and element.get("Value"):
                element = {**element, "Value": [_without_bulk_data(nested)
                                                if isinstance(nested, dict) else nested
                                                for nested in element["Value"]]}
        out[key] = element
    return out


def _dataset_from_json(item: dict) -> Dataset:
    """A Dataset from one DICOM JSON object, leaving out bulk data (pixel data above all)."""
    # Bulk data left out here, not by a handler: pydicom inspects a handler's signature for
    # every element (a third of the time for a SEG's header of 3,600 elements).
    dataset = Dataset.from_json(_without_bulk_data(item))
    for keyword in ("PixelData", "FloatPixelData", "DoubleFloatPixelData"):
        if keyword in dataset:
            del dataset[keyword]
    # File meta is not part of DICOM JSON (PS3.18 F.2); some servers add TransferSyntaxUID anyway.
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = dataset.get("SOPClassUID")
    meta.MediaStorageSOPInstanceUID = dataset.get("SOPInstanceUID")
    transfer_syntax = item.get("00020010", {}).get("Value", [None])[0]
    if transfer_syntax:
        meta.TransferSyntaxUID = UID(transfer_syntax)
    dataset.file_meta = meta
    return dataset


def fetch_instance_metadata(
    url: str | DICOMwebURL,
    *,
    session=None,
    headers: Mapping[str, str] | None = None,
    timeout: float | tuple[float, float] = DEFAULT_TIMEOUT,
) -> Dataset:
    """Fetch an instance's metadata (WADO-RS ``/metadata``) as a pydicom Dataset.

    One request; the Dataset holds everything but bulk data (no Pixel Data), including a SEG's
    per-frame functional groups. It can serve as the source image of ``write_segmentation``.

    Parameters
    ----------
    url : str or DICOMwebURL
        The instance's WADO-RS URL.
    session : requests.Session, optional
        Session to send the request with (authentication, proxies, retries).
    headers : mapping, optional
        Extra headers, e.g. ``{"Authorization": "Bearer ..."}``; added to ``session``.
    timeout : float or (float, float)
        Connect and read timeouts in seconds.

    Returns
    -------
    pydicom.Dataset
        With ``file_meta`` holding the SOP class and instance, and the transfer syntax when the
        server reports it (``00020010`` in the JSON).

    Raises
    ------
    SegmentationInputError
        If the URL is not an instance URL, or the server answers 404.
    DICOMwebError
        If the server cannot be reached, does not answer in time or answers another error.
    """
    target, url_headers = _resolve(url, headers)
    if target.sop_instance_uid is None:
        raise SegmentationInputError(f"{target} is a series URL; an instance URL is needed here.")
    return _dataset_from_json(_fetch_metadata_json(target, session, url_headers, timeout))


def _fetch_metadata_json(target: DICOMwebURL, session, headers: Mapping[str, str] | None,
                        timeout: float | tuple[float, float]) -> dict:
    """The instance's metadata as its DICOM JSON object (PS3.18 F.2), not yet a Dataset."""
    assert target.sop_instance_uid is not None
    client = _client(target.root, session, headers, timeout)
    try:
        items = client.retrieve_instance_metadata(
            target.study_instance_uid, target.series_instance_uid, target.sop_instance_uid
        )
    except Exception as error:  # requests' and dicomweb-client's errors, translated below
        _raise_for(error, str(target) + "/metadata", "fetching the instance's metadata",
                   headers=headers, session=session)
    item = items[0] if isinstance(items, list) else items
    if not isinstance(item, dict):
        raise SegmentationFileError(
            f"{target}: the server's metadata is not a DICOM JSON object."
        )
    return item


def _syntax_in(content_type: str) -> UID | None:
    """The ``transfer-syntax`` parameter of a Content-Type, if it has one."""
    for parameter in content_type.replace('"', ";").split(";"):
        name, _, value = parameter.strip().partition("=")
        if name.lower() == "transfer-syntax" and value.strip():
            return UID(value.strip())
    return None


def fetch_transfer_syntax(
    url: str | DICOMwebURL,
    *,
    session=None,
    headers: Mapping[str, str] | None = None,
    timeout: float | tuple[float, float] = DEFAULT_TIMEOUT,
) -> UID:
    """The transfer syntax an instance's frames are stored in, for servers whose metadata omits it.

    DICOM JSON has no file meta (PS3.18 F.2), so the metadata of most servers (Orthanc among them)
    does not say how the frames are encoded. Frame 1 is asked for with ``transfer-syntax=*``
    (PS3.18 8.7.3.5.2: the server's choice, which is the stored one) and only the response's
    Content-Type is read; the body is left unread.

    Parameters
    ----------
    url, session, headers, timeout
        As for :func:`fetch_instance_metadata`.

    Returns
    -------
    pydicom.uid.UID

    Raises
    ------
    SegmentationInputError, DICOMwebError
        As for :func:`fetch_instance_metadata`; DICOMwebError also when the answer names no
        transfer syntax.
    """
    import requests

    target, all_headers = _resolve(url, headers)
    frame_url = f"{target}/frames/1"
    http = session if session is not None else requests.Session()
    accept = 'multipart/related; type="application/octet-stream"; transfer-syntax=*'

    def probe() -> str:
        with http.get(frame_url, headers={**all_headers, "Accept": accept}, timeout=timeout,
                      stream=True) as response:
            if response.status_code >= 400:
                _ = response.content  # the server's words, read before the stream closes
            response.raise_for_status()
            content_type = response.headers.get("Content-Type", "")
            if _syntax_in(content_type) is None:
                # Some servers name it only in the part's own headers (PS3.18 8.7.3.5.2):
                # the first part's headers are at the start of the body.
                start = next(response.iter_content(4096), b"").decode("latin-1")
                part = start.split("\r\n\r\n", 2)
                for line in (part[0] + "\r\n" + part[1] if len(part) > 1 else "").splitlines():
                    if line.lower().startswith("content-type:") and _syntax_in(line):
                        return line.partition(":")[2]
            return content_type

    try:
        content_type = _retried(probe, statuses=_RETRIED_STATUSES)
    except requests.RequestException as error:
        response = getattr(error, "response", None)
        if response is not None and response.status_code >= 500:
            # A server may fail on frames of a syntax it cannot handle (Orthanc 1.10 answers 500
            # for HTJ2K's) yet send the instance as stored: its file meta says the syntax.
            stored = _stored_transfer_syntax(str(target), http, all_headers, timeout)
            if stored is not None:
                return stored
        _raise_for(error, frame_url, "asking for the transfer syntax of the frames",
                   headers=all_headers, session=session)
    syntax = _syntax_in(content_type)
    if syntax is not None:
        return syntax
    raise DICOMwebError(
        f"{_redact(frame_url)} did not name the frames' transfer syntax (Content-Type: {content_type}).",
        url=_redact(frame_url),
    )


def _stored_transfer_syntax(instance_url: str, http, headers: Mapping[str, str],
                            timeout: float | tuple[float, float]) -> UID | None:
    """The Transfer Syntax UID (0002,0010) in the file meta of the instance as the server stores
    it (PS3.18 8.7.3.5.2, ``transfer-syntax=*``), from the first bytes of its answer; None when
    that fails in any way (the caller then reports its own error)."""
    import requests

    accept = 'multipart/related; type="application/dicom"; transfer-syntax=*'
    try:
        with http.get(instance_url, headers={**headers, "Accept": accept}, timeout=timeout,
                      stream=True) as response:
            if response.status_code != 200:
                return None
            start = b""
            for chunk in response.iter_content(8192):
                start += chunk
                if len(start) >= FILE_META_READ_BYTES:
                    break
    except requests.RequestException:
        return None
    return file_meta_transfer_syntax(start)


def _resolve(url: str | DICOMwebURL, headers: Mapping[str, str] | None) -> tuple[DICOMwebURL, dict]:
    if isinstance(url, DICOMwebURL):
        return url, dict(headers or {})
    target, url_headers = parse_dicomweb_url(url)
    return target, {**url_headers, **(headers or {})}


def _frame_media_type(transfer_syntax_uid: str) -> tuple[str, str]:
    """The (media type, transfer syntax) to ask frames in (PS3.18 8.7.3.5.2, Table 8.7.3-5)."""
    uid = UID(transfer_syntax_uid)
    if not uid.is_encapsulated:
        # Native frames are the same bytes in any uncompressed little endian syntax.
        return _NATIVE, ExplicitVRLittleEndian
    for media_type, uids in _COMPRESSED_MEDIA_TYPES.items():
        if uid in uids:
            return media_type, uid
    raise SegmentationInputError(f"No DICOMweb media type is known for transfer syntax {uid.name}.")


def fetch_frames(
    root: str,
    study_instance_uid: str,
    series_instance_uid: str,
    sop_instance_uid: str,
    frame_numbers: Sequence[int],
    transfer_syntax_uid: str,
    *,
    session=None,
    headers: Mapping[str, str] | None = None,
    timeout: float | tuple[float, float] = DEFAULT_TIMEOUT,
    frames_per_request: int = FRAMES_PER_REQUEST,
) -> tuple[str, list[bytes]]:
    """Fetch encoded frames with WADO-RS frame retrieval; runs on a worker.

    Module-level and given plain values only, so Dask can send it to worker processes. The frames
    are asked for in the instance's own transfer syntax, ``frames_per_request`` per request; a
    server that cannot serve that syntax (406 Not Acceptable) is asked for native frames
    (Explicit VR Little Endian, which every server must offer, PS3.18 8.7.3.5.2), and so are
    this instance's later frames in this process, without asking for the syntax again.

    Parameters
    ----------
    root : str
        The DICOMweb service root, without credentials.
    study_instance_uid, series_instance_uid, sop_instance_uid : str
        The instance.
    frame_numbers : sequence of int
        One-based frame numbers (PS3.18 10.4.1.1.5), in the order wanted.
    transfer_syntax_uid : str
        The instance's transfer syntax.
    session : requests.Session, optional
        Sent to the worker pickled; holds authentication.
    headers : mapping, optional
        Extra headers, e.g. a bearer token.
    timeout : float or (float, float)
        Connect and read timeouts of each request, in seconds.
    frames_per_request : int
        The most frames asked for in one request.

    Returns
    -------
    transfer_syntax_uid : str
        The transfer syntax of the returned bytes (the instance's, or Explicit VR Little Endian
        after a fallback).
    frames : list of bytes
        One encoded frame per frame number, in the order given.

    Raises
    ------
    SegmentationInputError
        If the server answers 404 (a wrong UID, or a frame number beyond the instance).
    DICOMwebError
        If the server cannot be reached, does not answer in time, does not offer frame retrieval
        or returns another number of frames than asked for.
    """
    target = DICOMwebURL(root, study_instance_uid, series_instance_uid, sop_instance_uid)
    client = _client(root, session, headers, timeout)
    media_type, syntax = _frame_media_type(transfer_syntax_uid)
    refusal = (str(target), str(syntax))
    if refusal in _REFUSED_SYNTAXES:
        media_type, syntax = _NATIVE, ExplicitVRLittleEndian
    numbers = [int(n) for n in frame_numbers]
    frames: list[bytes] = []
    for start in range(0, len(numbers), frames_per_request):
        batch = numbers[start:start + frames_per_request]
        url = f"{target}/frames/{','.join(map(str, batch))}"
        try:
            try:
                got = _retrieve(client, target, batch, media_type, syntax)
            except Exception as error:
                if _status(error) != 406 or media_type == _NATIVE:
                    raise
                # The server cannot send this syntax as it is: take native frames instead.
                media_type, syntax = _NATIVE, ExplicitVRLittleEndian
                if len(_REFUSED_SYNTAXES) >= _MAX_REFUSED:
                    _REFUSED_SYNTAXES.clear()
                _REFUSED_SYNTAXES.add(refusal)
                got = _retrieve(client, target, batch, media_type, syntax)
        except Exception as error:
            status = _status(error)
            if status in (400, 405, 501):
                raise DICOMwebError(
                    f"{_redact(url)} answered HTTP {status}: the server does not seem to offer "
                    "WADO-RS frame retrieval (PS3.18 10.4.1.1.5).", url=_redact(url), status=status,
                ) from None
            _raise_for(error, url, f"fetching {len(batch)} frames", headers=headers,
                       session=session)
        if len(got) != len(batch):
            raise DICOMwebError(
                f"{_redact(url)} returned {len(got)} frames for the {len(batch)} asked for.",
                url=_redact(url),
            )
        frames.extend(bytes(frame) for frame in got)  # dicomweb-client gives bytearrays
    return str(syntax), frames


def _retrieve(client, target: DICOMwebURL, batch, media_type: str, syntax: str) -> list[bytes]:
    return client.retrieve_instance_frames(
        target.study_instance_uid, target.series_instance_uid, target.sop_instance_uid,
        batch, media_types=((media_type, str(syntax)),),
    )


def _status(error: Exception) -> int | None:
    response = getattr(error, "response", None)
    return getattr(response, "status_code", None)


class _MultipartFile(io.RawIOBase):
    """A multipart/related body of one file, read from disk as ``requests`` sends it.

    It has a length, so ``requests`` sends a Content-Length instead of chunked encoding (which not
    every server accepts), and reads it in blocks: the file is never in memory whole.
    """

    def __init__(self, path: pathlib.Path, boundary: str, part_type: str) -> None:
        self._head = f"--{boundary}\r\nContent-Type: {part_type}\r\n\r\n".encode()
        self._tail = f"\r\n--{boundary}--\r\n".encode()
        self._file: IO[bytes] = open(path, "rb")  # noqa: SIM115 (closed with the body)
        self._size = os.fstat(self._file.fileno()).st_size
        self._position = 0

    def __len__(self) -> int:
        return len(self._head) + self._size + len(self._tail)

    def readable(self) -> bool:
        return True

    def tell(self) -> int:
        # requests takes the length to send as len() less tell(): RawIOBase's tell() raises
        # (no seek), which requests takes as "all read" and sends the body chunked.
        return self._position

    def seekable(self) -> bool:
        return True

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        # requests rewinds the body for a 307 or 308 answer, even one it does not follow.
        base = {io.SEEK_SET: 0, io.SEEK_CUR: self._position, io.SEEK_END: len(self)}[whence]
        self._position = max(0, min(base + offset, len(self)))
        head = len(self._head)
        self._file.seek(min(max(self._position - head, 0), self._size))
        return self._position

    def readinto(self, buffer) -> int:
        view = memoryview(buffer)
        written = 0
        while written < len(view):
            chunk = self._chunk(len(view) - written)
            if not chunk:
                break
            view[written:written + len(chunk)] = chunk
            written += len(chunk)
        return written

    def _chunk(self, n: int) -> bytes:
        head, body_end = len(self._head), len(self._head) + self._size
        if self._position < head:
            chunk = self._head[self._position:self._position + n]
        elif self._position < body_end:
            chunk = self._file.read(min(n, body_end - self._position))
        else:
            offset = self._position - body_end
            chunk = self._tail[offset:offset + n]
        self._position += len(chunk)
        return chunk

    def close(self) -> None:
        self._file.close()
        super().close()


def store_instance(
    path: str | os.PathLike,
    root: str,
    *,
    session=None,
    headers: Mapping[str, str] | None = None,
    timeout: float | tuple[float, float] = DEFAULT_TIMEOUT,
) -> Dataset:
    """Store a DICOM file on a DICOMweb server with STOW-RS, streamed from disk.

    dicomweb-client's ``store_instances`` takes Datasets and builds the whole request body in
    memory; a SEG of several GB would not fit, so the body here is read from the file in blocks.

    Parameters
    ----------
    path : str or os.PathLike
        A DICOM Part 10 file (as ``write_segmentation`` writes).
    root : str
        The DICOMweb service root (``http://host:8042/dicom-web``); credentials as for
        :func:`fetch_instance_metadata`.
    session, headers, timeout
        As for :func:`fetch_instance_metadata`.

    Returns
    -------
    pydicom.Dataset
        The server's response (PS3.18 10.5.3), with ``ReferencedSOPSequence``.

    Raises
    ------
    SegmentationInputError
        If ``path`` is not a file.
    DICOMwebError
        If the server cannot be reached, refuses the instance (too large: HTTP 413, naming the
        size), or reports it failed to store it.
    """
    import requests

    path = pathlib.Path(path)
    if not path.is_file():
        raise SegmentationInputError(f"{path} is not a file: nothing to store.")
    given = urlsplit(root)
    if given.scheme.lower() not in ("http", "https") or not given.netloc:
        raise SegmentationInputError(
            f"{_redact(root)} is not a DICOMweb root: it starts with http:// or https:// and "
            "names the server (STOW-RS posts to ROOT/studies)."
        )
    if given.query or given.fragment:
        raise SegmentationInputError(
            f"{_redact(root)}: a DICOMweb root has no query string; pass keys as headers= "
            "(STOW-RS posts to ROOT/studies)."
        )
    url = root.rstrip("/") + "/studies"
    url_headers = {}
    if given.username is not None:
        url_headers = parse_dicomweb_url(url.rstrip("/") + "/1/series/1")[1]
        url = _redact(url)
    boundary = uuid.uuid4().hex
    request_headers = {
        **url_headers,
        **(headers or {}),
        "Content-Type": f'multipart/related; type="application/dicom"; boundary={boundary}',
        "Accept": "application/dicom+json",
    }
    size = path.stat().st_size
    http = session if session is not None else requests.Session()
    with _MultipartFile(path, boundary, "application/dicom") as body:
        try:
            # Not followed: a redirected POST becomes a GET (of a login page, say) whose 200
            # would read as stored, with the headers sent to another host.
            response = http.post(url, data=body, headers=request_headers, timeout=timeout,
                                 allow_redirects=False)
        except requests.RequestException as error:
            # A server refusing a large body may close the connection before reading it all.
            _raise_for(error, url, f"storing {path.name} ({size} bytes)",
                       "is it running, and does it accept requests of that size?",
                       headers=request_headers, session=session)
    if response.status_code == 413:
        raise DICOMwebError(
            f"{_redact(url)} refused {path.name} ({size} bytes) as too large (HTTP 413 Payload Too "
            f"Large{_server_message(response)}): the server's request size limit is below the "
            "instance's size; raise it on the server or write smaller SEGs (fewer segments per "
            "instance, a coarser pyramid level, or a compressed transfer syntax).",
            url=_redact(url), status=413,
        )
    if response.is_redirect:
        location = _redact(response.headers.get("Location", "(no Location)"))
        raise DICOMwebError(
            f"{_redact(url)} answered HTTP {response.status_code}, redirecting to {location}, "
            f"instead of storing {path.name}: nothing was stored. A login page means missing or "
            "expired credentials; a DICOMweb service elsewhere, give its root.",
            url=_redact(url), status=response.status_code,
        )
    answer = _stow_answer(response)
    failed = answer.get("FailedSOPSequence") if answer is not None else None
    if failed:
        codes = [int(item.get("FailureReason", 0) or 0) for item in failed]
        reasons = ", ".join(f"0x{code:04X}" if code else "(none given)" for code in codes)
        hint = (" (PS3.18 Table I.2-1: 0xA700 means out of resources, e.g. a full storage)"
                if 0xA700 in codes else " (PS3.4 Annex B.2.3 and PS3.18 Table I.2-1)")
        raise DICOMwebError(
            f"{_redact(url)} failed to store {path.name} ({size} bytes): failure reason "
            f"{reasons}{hint}.", url=_redact(url), status=response.status_code,
        )
    if not response.ok:
        try:
            response.raise_for_status()
        except requests.HTTPError as error:
            _raise_for(error, url, f"storing {path.name} ({size} bytes)",
                       headers=request_headers, session=session)
    header = pydicom.dcmread(path, stop_before_pixels=True, specific_tags=[
        "StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID"])
    uid = header.get("SOPInstanceUID")
    if answer is not None:
        # A success lists the instance in ReferencedSOPSequence (PS3.18 10.5.3); Orthanc's
        # plugin answers 200 with both sequences empty when its storage is full.
        stored = {str(item.get("ReferencedSOPInstanceUID", ""))
                  for item in answer.get("ReferencedSOPSequence", [])}
        if str(uid) not in stored:
            raise DICOMwebError(
                f"{_redact(url)} answered HTTP {response.status_code} to storing {path.name} "
                f"({size} bytes) without listing it as stored or as failed: it was not stored "
                "(the server's log says why; a full storage, say).",
                url=_redact(url), status=response.status_code,
            )
        _warn_of_changes(answer, response, url, path.name)
        return answer
    # No DICOM JSON answer (XML, or none): whether the instance was stored is asked of the
    # server itself, by its metadata (WADO-RS).
    # The root without its user:password@ (sent as headers): a URL may reach a message, and
    # dicomweb-client logs the URLs it asks.
    instance = DICOMwebURL(_redact(root.rstrip("/")), str(header.get("StudyInstanceUID", "")),
                           str(header.get("SeriesInstanceUID", "")), str(uid))
    try:
        fetch_instance_metadata(instance, session=session, headers={**url_headers, **(headers or {})},
                                timeout=timeout)
    except (SegmentationInputError, DICOMwebError) as error:
        raise DICOMwebError(
            f"{_redact(url)} answered HTTP {response.status_code} to storing {path.name} "
            f"({size} bytes), not in DICOM JSON, and the instance cannot be found there: it "
            f"was not stored ({error})", url=_redact(url), status=response.status_code,
        ) from None
    return Dataset()


def _warn_of_changes(answer: Dataset, response: Any, url: str, name: str) -> None:
    """Stored, but with warnings (PS3.18 10.5.3: 202 Accepted, WarningReason such as 0xB000,
    the server changed attribute values): said, as the instance on the server differs."""
    codes = [int(item.get("WarningReason", 0) or 0)
             for item in answer.get("ReferencedSOPSequence", []) if "WarningReason" in item]
    if "WarningReason" in answer:
        codes.append(int(answer.WarningReason or 0))
    header = response.headers.get("Warning", "")
    if response.status_code == 202 or codes or header:
        reasons = ", ".join(f"0x{code:04X}" for code in codes) or "none given"
        warnings.warn(
            f"{_redact(url)} stored {name} with warnings (HTTP {response.status_code}, reason "
            f"{reasons}{'; ' + header if header else ''}): 0xB000 means the server changed "
            "attribute values (PS3.4 Annex B.2.3), so its copy differs from the file.",
            UserWarning, stacklevel=3,
        )


def _stow_answer(response) -> Dataset | None:
    """The STOW-RS response body as a Dataset, when the server sent one in DICOM JSON."""
    if "json" not in response.headers.get("Content-Type", ""):
        return None
    try:
        payload: Any = response.json()
        # Not every JSON answer is DICOM JSON: an error of the server's own ({"error": ...}).
        return _dataset_from_json(payload) if isinstance(payload, dict) else None
    except (ValueError, TypeError, KeyError, AttributeError):
        return None
