"""Benchmark of reading a SEG from a DICOMweb server: daskseg's frame requests against highdicom.

Usage::

    .venv/bin/python benchmarks/dicomweb.py            # the 16384 x 16384 SEG of benchmarks/write.py
    .venv/bin/python benchmarks/dicomweb.py --quick    # a 4096 x 4096 SEG, to check it runs

The five-segment BINARY JPEG 2000 SEG (512-pixel tiles, TILED_FULL; made as benchmarks/read.py
does when benchmarks/out/ lacks it) is stored with STOW-RS in an Orthanc on 127.0.0.1 that this
script starts in a temporary folder (Debian packages orthanc and orthanc-dicomweb; ``make tools``).
Then, each in its own process, the SEG is decoded into a label image:

- daskseg: ``read_segmentation(url, combine_segments=True)`` on a 2-process LocalCluster; the
  metadata is fetched once, each task fetches its own frames (WADO-RS, many per request).
- highdicom: dicomweb-client ``retrieve_instance`` (the whole instance in one request), then
  ``Segmentation.from_dataset(...).get_total_pixel_matrix(combine_segments=True)``.

Then the same for SEGs of a series: the 300-slice CT case of benchmarks/volume.py (512 x 512,
117 segments; 60 slices of 256 x 256 with --quick), BINARY, written by daskseg in JPEG 2000 and
natively (as dcmqi and TotalSegmentator write it), read into a label volume:

- daskseg: ``open_segmentation(url).to_numpy(combine_segments=True)`` on a 2-process
  LocalCluster, opening included (the metadata, the frame index from its JSON);
- highdicom: ``retrieve_instance``, then ``get_pixels_by_source_instance`` of the same planes.

Printed: each time, the ratio, and the HTTP requests each made, counted in Orthanc's own log.
"""

from __future__ import annotations

import argparse
import os
import pathlib
import re
import sys
import tempfile
import time

HERE = pathlib.Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent / "tests"))  # the Orthanc runner of the tests

from _common import emit, run_step  # noqa: E402
from _common import OUT  # noqa: E402
from read import digest, ensure_seg  # noqa: E402


def _warm() -> None:
    """Import what the tasks use, as on a live cluster (highdicom's steps import before timing)."""
    import dicomweb_client  # noqa: F401
    import highdicom  # noqa: F401
    import imagecodecs  # noqa: F401
    import requests  # noqa: F401

    import daskseg._decode  # noqa: F401
    import daskseg._web  # noqa: F401


def step_daskseg(url: str) -> None:
    from distributed import Client

    from daskseg import local_cluster, read_segmentation

    with local_cluster(2) as cluster, Client(cluster) as client:
        client.run(_warm)
        start = time.perf_counter()
        labels = client.compute(read_segmentation(url, combine_segments=True)).result()
        elapsed = time.perf_counter() - start
    emit({"time": elapsed, "checksum": digest(labels)})


def _highdicom_after_download(url: str, read) -> None:
    """Time dicomweb-client's ``retrieve_instance`` (one request) and ``read`` of highdicom's
    Segmentation of it."""
    import highdicom as hd
    from dicomweb_client import DICOMwebClient

    from daskseg.dicomweb import parse_dicomweb_url

    target, _ = parse_dicomweb_url(url)
    start = time.perf_counter()
    dataset = DICOMwebClient(target.root).retrieve_instance(
        target.study_instance_uid, target.series_instance_uid, target.sop_instance_uid
    )
    downloaded = time.perf_counter() - start
    labels = read(hd.seg.Segmentation.from_dataset(dataset, copy=False))
    elapsed = time.perf_counter() - start
    emit({"time": elapsed, "download": downloaded, "checksum": digest(labels)})


def step_highdicom(url: str) -> None:
    _highdicom_after_download(url, lambda seg: seg.get_total_pixel_matrix(combine_segments=True))


def step_volume_seg(syntax: str, output: str, *size: str) -> None:
    """Write the volume benchmark's BINARY SEG (its series and labels) in ``syntax``."""
    from distributed import Client
    from volume import _case

    from daskseg import local_cluster, write_segmentation

    series, labels, descriptions = _case(*map(int, size))
    with local_cluster(2) as cluster, Client(cluster) as client:
        write_segmentation(labels, series, descriptions, output, transfer_syntax_uid=syntax,
                           client=client, overwrite=True, progress=False)
    emit({})


def step_volume_daskseg(url: str) -> None:
    from distributed import Client

    from daskseg import local_cluster, open_segmentation

    with local_cluster(2) as cluster, Client(cluster) as client:
        client.run(_warm)
        start = time.perf_counter()
        reader = open_segmentation(url)
        opened = time.perf_counter() - start
        labels = reader.to_numpy(combine_segments=True, client=client)
        elapsed = time.perf_counter() - start
    emit({"time": elapsed, "open": opened, "checksum": digest(labels)})


def step_volume_highdicom(url: str) -> None:
    from daskseg import open_segmentation

    uids = open_segmentation(url).source_sop_instance_uids  # the planes daskseg reads, sorted
    _highdicom_after_download(
        url, lambda seg: seg.get_pixels_by_source_instance(uids, combine_segments=True))


def _requests(log: pathlib.Path) -> list[str]:
    return re.findall(r"\(http\) (?:GET|POST) (\S+)", log.read_text())


def main() -> None:
    if len(sys.argv) > 2 and sys.argv[1] == "--step":
        name, *rest = sys.argv[2:]
        globals()[f"step_{name}"](*rest)
        return
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a 4096 x 4096 SEG instead")
    args = parser.parse_args()

    import pydicom
    from _orthanc import orthanc_missing, run_orthanc

    from daskseg.dicomweb import store_instance

    reason = orthanc_missing()
    if reason:
        sys.exit(f"benchmarks/dicomweb.py needs Orthanc: {reason}")
    rows = 4096 if args.quick else 16384
    path = ensure_seg(rows, 5)
    header = pydicom.dcmread(path, stop_before_pixels=True)
    script = str(pathlib.Path(__file__).resolve())
    with tempfile.TemporaryDirectory(prefix="daskseg-orthanc-") as folder:
        log = pathlib.Path(folder) / "orthanc.log"
        # Orthanc's request body limit is far above these SEGs; --verbose logs each request.
        with run_orthanc(pathlib.Path(folder), verbose=True) as root:
            store_instance(path, root)
            url = (f"{root}/studies/{header.StudyInstanceUID}/series/{header.SeriesInstanceUID}"
                   f"/instances/{header.SOPInstanceUID}")
            before = len(_requests(log))
            ours = run_step(script, "daskseg", url)
            ours_requests = _requests(log)[before:]
            before = len(_requests(log))
            theirs = run_step(script, "highdicom", url)
            theirs_requests = len(_requests(log)) - before
            volumes = []
            size = (60, 256, 117) if args.quick else (300, 512, 117)
            for syntax, label in (("1.2.840.10008.1.2.4.90", "JPEG 2000"),
                                  ("1.2.840.10008.1.2.1", "native")):
                volume_path = OUT / f"volume-web-{'-'.join(map(str, size))}-{syntax}.dcm"
                if not volume_path.exists():
                    run_step(script, "volume_seg", syntax, str(volume_path), *map(str, size))
                volume_header = pydicom.dcmread(volume_path, stop_before_pixels=True)
                store_instance(volume_path, root)
                volume_url = (f"{root}/studies/{volume_header.StudyInstanceUID}/series/"
                              f"{volume_header.SeriesInstanceUID}/instances/"
                              f"{volume_header.SOPInstanceUID}")
                before = len(_requests(log))
                ours_volume = run_step(script, "volume_daskseg", volume_url)
                ours_volume["requests"] = len(_requests(log)) - before
                theirs_volume = run_step(script, "volume_highdicom", volume_url)
                volumes.append((label, volume_path, volume_header, ours_volume, theirs_volume))
    frame_requests = sum("/frames/" in r for r in ours_requests)
    print(f"machine: {os.cpu_count()} cores; Orthanc on 127.0.0.1")
    print(f"\n{rows} x {rows} five-segment BINARY JPEG 2000 SEG (512 tiles, {int(header.NumberOfFrames)} "
          f"frames, {os.path.getsize(path) / 2**20:.1f} MiB) from WADO-RS -> label image")
    print(f"  daskseg (2-process LocalCluster):        {ours['time']:6.2f} s  "
          f"{len(ours_requests)} HTTP requests ({frame_requests} of frames)")
    print(f"  highdicom after retrieve_instance:       {theirs['time']:6.2f} s  "
          f"{theirs_requests} HTTP request(s); the download took {theirs['download']:.2f} s")
    print(f"  ratio (highdicom / daskseg): {theirs['time'] / ours['time']:.2f}x; "
          f"same labels: {ours['checksum'] == theirs['checksum']}")
    slices, size, segments = (60, 256, 117) if args.quick else (300, 512, 117)
    print(f"\nSEGs of a CT series of {slices} x {size} x {size}, {segments} segments, BINARY, "
          "from WADO-RS -> label volume")
    for label, volume_path, volume_header, ours_volume, theirs_volume in volumes:
        print(f"  {label} ({int(volume_header.NumberOfFrames)} frames, "
              f"{os.path.getsize(volume_path) / 2**20:.1f} MiB):")
        print(f"    daskseg (2-process LocalCluster): {ours_volume['time']:6.2f} s, of which "
              f"opening {ours_volume['open']:.2f} s; {ours_volume['requests']} HTTP requests")
        print(f"    highdicom after retrieve_instance: {theirs_volume['time']:6.2f} s; the "
              f"download took {theirs_volume['download']:.2f} s")
        print(f"    ratio (highdicom / daskseg): {theirs_volume['time'] / ours_volume['time']:.2f}x;"
              f" same labels: {ours_volume['checksum'] == theirs_volume['checksum']}")


if __name__ == "__main__":
    main()
