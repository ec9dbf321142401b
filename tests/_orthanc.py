"""A real Orthanc with its DICOMweb plugin, run in the foreground for the tests.

Debian's ``orthanc`` and ``orthanc-dicomweb`` packages (``make tools`` installs them as root);
each server gets its own configuration and storage folder and free ports on 127.0.0.1, and is
stopped after. Orthanc runs as root without changes to its configuration.
"""

from __future__ import annotations

import contextlib
import json
import pathlib
import shutil
import socket
import subprocess
import time
import urllib.error
import urllib.request

PLUGIN = pathlib.Path("/usr/share/orthanc/plugins/libOrthancDicomWeb.so")


def orthanc_missing() -> str | None:
    """Why Orthanc cannot run here, or None."""
    if shutil.which("Orthanc") is None:
        return "Orthanc is not installed (Debian package orthanc; make tools installs it as root)"
    if not PLUGIN.exists():
        return f"{PLUGIN} is absent (Debian package orthanc-dicomweb)"
    return None


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def run_orthanc(folder: pathlib.Path, *, verbose: bool = False, **settings):
    """Start Orthanc with its storage in ``folder``; yield its DICOMweb root URL.

    ``verbose`` logs every HTTP request to ``folder / "orthanc.log"`` (see :func:`requests_seen`).
    """
    folder.mkdir(parents=True, exist_ok=True)
    port = free_port()
    config = {
        "Name": "daskseg-tests",
        "StorageDirectory": str(folder / "storage"),
        "IndexDirectory": str(folder / "storage"),
        "HttpPort": port,
        "DicomPort": free_port(),
        "RemoteAccessAllowed": False,
        "AuthenticationEnabled": False,
        "Plugins": [str(PLUGIN)],
        "DicomWeb": {"Enable": True, "Root": "/dicom-web/"},
        **settings,
    }
    (folder / "orthanc.json").write_text(json.dumps(config))
    log = open(folder / "orthanc.log", "wb")  # noqa: SIM115 (closed below)
    process = subprocess.Popen(
        ["Orthanc", *(["--verbose"] if verbose else []), str(folder / "orthanc.json")],
        stdout=log, stderr=log, cwd=folder,
    )
    root = f"http://127.0.0.1:{port}/dicom-web"
    try:
        deadline = time.monotonic() + 30
        while True:
            if process.poll() is not None:
                raise RuntimeError(f"Orthanc exited with {process.returncode}: "
                                   f"{(folder / 'orthanc.log').read_text()[-2000:]}")
            try:
                with urllib.request.urlopen(f"{root}/studies", timeout=2):
                    break
            except urllib.error.HTTPError:
                break  # it answers (401 when it wants a password)
            except (urllib.error.URLError, ConnectionError, TimeoutError):
                if time.monotonic() > deadline:
                    raise RuntimeError("Orthanc did not answer within 30 s") from None
                time.sleep(0.1)
        yield root
    finally:
        process.terminate()
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        log.close()
