"""Benchmark of write_segmentation of a CT series against highdicom's Segmentation.

Usage::

    .venv/bin/python benchmarks/volume.py

A synthetic CT series of 300 slices of 512 x 512 and a label volume of 117 segments (one
box-shaped structure each, as TotalSegmentator's organs), as in issue #11. daskseg runs on a
2-process LocalCluster that is already running (started and warmed up on a small case before
the timing, as in a pipeline that writes case after case); highdicom runs serially for native
BINARY and with ProcessPoolExecutor(2) for JPEG 2000. Each measured step runs in its own process;
peak memory is the resident set of the whole process tree (workers included).

Not yet measured here (see issue #11): reading the SEG back, and the 1,200 x 1024 x 1024 case.
"""

from __future__ import annotations

import argparse
import os
import pathlib
import sys
import time

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))

from _common import OUT, emit, gib, run_step  # noqa: E402

NATIVE = "1.2.840.10008.1.2.1"
J2K = "1.2.840.10008.1.2.4.90"
SLICES, SIZE, SEGMENTS = 300, 512, 117


def _case(segmentation_type: str = "BINARY"):
    import numpy as np

    from daskseg.synthetic import make_ct_series, make_label_volume, make_segment_descriptions

    OUT.mkdir(exist_ok=True)
    path = OUT / f"labels-{SLICES}-{SIZE}-{SEGMENTS}.npy"
    if not path.exists():
        np.save(path, make_label_volume(SLICES, SIZE, SIZE, SEGMENTS))
    series = make_ct_series(SLICES, SIZE, SIZE, pixel_spacing=(0.8, 0.8))
    descriptions = make_segment_descriptions(SEGMENTS, segmentation_type=segmentation_type)
    return series, np.load(path), descriptions


def step_daskseg(segmentation_type: str, transfer_syntax: str, output: str) -> None:
    from distributed import Client

    from daskseg import local_cluster, write_segmentation
    from daskseg.synthetic import make_ct_series, make_label_volume, make_segment_descriptions

    series, labels, descriptions = _case(segmentation_type)
    with local_cluster(2, memory_limit="4GiB") as cluster, Client(cluster) as client:
        # A running pipeline's cluster and client have imported and loaded everything once.
        write_segmentation(
            make_label_volume(4, 64, 64, 3), make_ct_series(4, 64, 64), make_segment_descriptions(3),
            output, transfer_syntax_uid=transfer_syntax, client=client, overwrite=True,
        )
        start = time.perf_counter()
        write_segmentation(
            labels, series, descriptions, output, segmentation_type=segmentation_type,
            transfer_syntax_uid=transfer_syntax, client=client, overwrite=True,
        )
        elapsed = time.perf_counter() - start
    emit({"time": elapsed, "size": os.path.getsize(output)})


def step_highdicom(segmentation_type: str, transfer_syntax: str, output: str) -> None:
    from concurrent.futures import ProcessPoolExecutor

    import highdicom as hd

    series, labels, descriptions = _case(segmentation_type)
    pool = ProcessPoolExecutor(2) if transfer_syntax != NATIVE else None
    if pool is not None:
        pool.submit(int).result()  # start the processes outside the timing
    start = time.perf_counter()
    seg = hd.seg.Segmentation(
        series, labels, segmentation_type, descriptions, hd.UID(), 1, hd.UID(), 1, "m", "m", "1",
        "1", transfer_syntax_uid=transfer_syntax, workers=pool if pool is not None else 0,
    )
    seg.save_as(output)
    elapsed = time.perf_counter() - start
    if pool is not None:
        pool.shutdown()
    emit({"time": elapsed, "frames": int(seg.NumberOfFrames)})


def step_check(output: str) -> None:
    """Read the SEG back with highdicom (an independent reader) and compare with the labels."""
    import highdicom as hd
    import numpy as np

    _, labels, _ = _case()
    seg = hd.seg.segread(output)
    # The series is made anew in each step (new UIDs): take the file's, in the order given.
    pixels = seg.get_pixels_by_source_instance(
        [item.ReferencedSOPInstanceUID for item in seg.SourceImageSequence], combine_segments=True,
        assert_missing_frames_are_empty=True,
    )
    emit({"equal": bool(np.array_equal(pixels, labels))})


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--step", nargs="+", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.step:
        name, *rest = args.step
        globals()[f"step_{name}"](*rest)
        return

    script = str(pathlib.Path(__file__).resolve())
    _case()
    print(f"machine: {os.cpu_count()} cores; results in {OUT}")
    print(f"CT series {SLICES} x {SIZE} x {SIZE}, {SEGMENTS} segments as labels; daskseg on a "
          "running 2-process LocalCluster")
    for kind, syntax, pool in [
        ("BINARY", NATIVE, "serial"),
        ("BINARY", J2K, "ProcessPoolExecutor(2)"),
        ("LABELMAP", J2K, "ProcessPoolExecutor(2)"),
    ]:
        ours_path, theirs_path = str(OUT / "volume-daskseg.dcm"), str(OUT / "volume-highdicom.dcm")
        ours = run_step(script, "daskseg", kind, syntax, ours_path)
        check = run_step(script, "check", ours_path)
        theirs = run_step(script, "highdicom", kind, syntax, theirs_path)
        name = "native" if syntax == NATIVE else "JPEG 2000"
        print(f"\n{kind} {name}:")
        print(f"  daskseg:   {ours['time']:6.2f} s  peak {gib(ours['peak_rss'])}  "
              f"file {ours['size'] / 2**20:.0f} MiB  read back equal: {check['equal']}")
        print(f"  highdicom: {theirs['time']:6.2f} s  peak {gib(theirs['peak_rss'])}  ({pool}, "
              f"{theirs['frames']} frames)")
        print(f"  speed-up {theirs['time'] / ours['time']:.2f}x, memory highdicom / daskseg "
              f"{theirs['peak_rss'] / ours['peak_rss']:.2f}x")


if __name__ == "__main__":
    main()
