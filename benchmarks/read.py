"""Benchmark of read_segmentation against highdicom, and to_zarr of a SEG larger than memory.

Usage::

    .venv/bin/python benchmarks/read.py          # needs the SEGs of benchmarks/write.py, or makes them
    .venv/bin/python benchmarks/read.py --quick  # the 16384^2 SEGs only

Part 1: a 16384 x 16384 five-segment BINARY JPEG 2000 SEG (512-pixel tiles, TILED_FULL) decoded
to a label image in memory: daskseg's ``open_segmentation(path).to_numpy(combine_segments=True)``
on a 2-process LocalCluster against highdicom's
``segread(...).get_total_pixel_matrix(combine_segments=True)``, each in its own process, with its
peak memory. daskseg runs twice: as shipped (codestreams repeated across the slide, such as empty
tiles, decoded once per worker) and decoding every frame, to show what the parallel decode alone
gives.

Part 1b: the same on a SEG of a mask with detail in every tile (random labels in 16-pixel
squares, so no frame repeats), daskseg on ``local_cluster()`` and on a plain
``LocalCluster(n_workers=2, threads_per_worker=1)`` (its nannies set ``MALLOC_TRIM_THRESHOLD_``);
on the plain cluster also as ``client.compute(read_segmentation(...)).result()``, where Dask
gathers every block on one worker and sends the whole through the scheduler.

Part 2: ``to_zarr`` of the 65536 x 65536 three-segment SEG (its label image is 4 GiB) with
workers limited to 600 MiB each: time and peak memory of the whole process tree.
"""

from __future__ import annotations

import argparse
import os
import pathlib
import sys
import time

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))

from _common import OUT, emit, gib, run_step  # noqa: E402

J2K = "1.2.840.10008.1.2.4.90"


def ensure_seg(rows: int, n_segments: int, kind: str = "tissue") -> pathlib.Path:
    """The SEG that benchmarks/write.py writes, made here if it is missing."""
    path = OUT / (f"daskseg-{rows}.dcm" if kind == "tissue" else f"daskseg-{kind}.dcm")
    if path.exists():
        return path
    OUT.mkdir(exist_ok=True)
    from distributed import Client

    from daskseg import local_cluster, write_segmentation
    from daskseg.synthetic import (make_detailed_mask, make_segment_descriptions, make_slide,
                                   make_tissue_mask)

    make = make_tissue_mask if kind == "tissue" else make_detailed_mask
    source = make_slide(rows, rows, tile_size=(512, 512))
    with local_cluster(2) as cluster, Client(cluster) as client:
        write_segmentation(
            make(rows, rows, n_segments, chunks=2048), source,
            make_segment_descriptions(n_segments), path, transfer_syntax_uid=J2K,
            dimension_organization_type="TILED_FULL", client=client,
        )
    return path


def digest(labels) -> str:
    """A hash of the label image's values (as uint16, whatever type each reader returns).

    Taken 1024 rows at a time: converting the whole image at once doubled and tripled it in
    memory, and that, not the reader, set the step's peak.
    """
    import hashlib

    import numpy as np

    hasher = hashlib.sha256()
    for start in range(0, labels.shape[0], 1024):
        hasher.update(np.ascontiguousarray(labels[start : start + 1024], dtype=np.uint16).data)
    return hasher.hexdigest()


def _set_small_codestream(limit: int) -> None:
    # What a live cluster that has read before has imported: the decoder and dask.array,
    # whose functions the reader's graph holds (daskseg itself imports neither on a worker).
    import dask.array  # noqa: F401

    import daskseg._decode

    daskseg._decode._SMALL_CODESTREAM = limit


def step_daskseg(path: str, cache: str = "cache", cluster_kind: str = "local",
                 how: str = "numpy") -> None:
    """One read into memory: ``to_numpy`` ("numpy"), or Dask's compute of the lazy array."""
    from distributed import Client, LocalCluster

    from daskseg import local_cluster, open_segmentation, read_segmentation

    if cluster_kind == "local":
        cluster = local_cluster(2, dashboard_address=None)
    else:  # as a user starts one
        cluster = LocalCluster(n_workers=2, threads_per_worker=1, dashboard_address=None)
    with cluster, Client(cluster) as client:
        # Warm imports, as a live cluster has; "nocache" decodes every frame, even the repeats.
        client.run(_set_small_codestream, 4096 if cache == "cache" else 0)
        start = time.perf_counter()
        if how == "numpy":
            labels = open_segmentation(path).to_numpy(combine_segments=True, client=client)
        else:
            labels = client.compute(read_segmentation(path, combine_segments=True)).result()
        elapsed = time.perf_counter() - start
    emit({"time": elapsed, "checksum": digest(labels)})


def step_highdicom(path: str) -> None:
    import highdicom as hd

    start = time.perf_counter()
    labels = hd.seg.segread(path).get_total_pixel_matrix(combine_segments=True)
    elapsed = time.perf_counter() - start
    emit({"time": elapsed, "checksum": digest(labels)})


def step_to_zarr(path: str, store: str) -> None:
    import shutil

    import numpy as np
    import zarr
    from distributed import Client

    from daskseg import local_cluster, open_segmentation

    shutil.rmtree(store, ignore_errors=True)
    with local_cluster(2, memory_limit="600MiB") as cluster, \
            Client(cluster) as client:
        start = time.perf_counter()
        seg = open_segmentation(path)
        seg.to_zarr(store, combine_segments=True, client=client)
        elapsed = time.perf_counter() - start
    written = zarr.open_array(store, mode="r")
    # A spot check against highdicom's decoding of the same region.
    import highdicom as hd

    region = hd.seg.segread(path, lazy_frame_retrieval=True).get_total_pixel_matrix(
        row_start=30001, row_end=31001, column_start=20001, column_end=21001,
        combine_segments=True,
    )
    equal = bool(np.array_equal(written[30000:31000, 20000:21000], region))
    emit({"time": elapsed, "shape": list(written.shape), "equal": equal,
          "mask_bytes": int(np.prod(written.shape)) * written.dtype.itemsize})


def main() -> None:
    if len(sys.argv) > 2 and sys.argv[1] == "--step":
        name, *rest = sys.argv[2:]
        globals()[f"step_{name}"](*rest)
        return
    # Arguments checked (--help, a typo) before minutes of work start.
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="the 16384^2 comparison only")
    quick = parser.parse_args().quick
    script = str(pathlib.Path(__file__).resolve())
    seg16 = str(ensure_seg(16384, 5))
    ours = run_step(script, "daskseg", seg16)
    uncached = run_step(script, "daskseg", seg16, "nocache")
    plain = run_step(script, "daskseg", seg16, "cache", "plain")
    theirs = run_step(script, "highdicom", seg16)
    print(f"machine: {os.cpu_count()} cores")
    print(f"\n16384 x 16384 five-segment BINARY JPEG 2000 SEG (512 tiles, "
          f"{os.path.getsize(seg16) / 2**20:.1f} MiB) -> label image")
    print(f"  daskseg (2-process LocalCluster): {ours['time']:6.2f} s  peak {gib(ours['peak_rss'])}")
    print(f"  daskseg, every frame decoded:     {uncached['time']:6.2f} s  "
          f"peak {gib(uncached['peak_rss'])}")
    print(f"  daskseg (plain LocalCluster):     {plain['time']:6.2f} s  "
          f"peak {gib(plain['peak_rss'])}  ({theirs['time'] / plain['time']:.2f}x highdicom)")
    print(f"  highdicom get_total_pixel_matrix: {theirs['time']:6.2f} s  "
          f"peak {gib(theirs['peak_rss'])}")
    same = ours["checksum"] == theirs["checksum"] == uncached["checksum"]
    print(f"  speed-up: {theirs['time'] / ours['time']:.2f}x (target >= 1.6x), "
          f"{theirs['time'] / uncached['time']:.2f}x without reusing repeated frames; "
          f"same labels: {same}")

    detailed = str(ensure_seg(16384, 5, "detailed"))
    local = run_step(script, "daskseg", detailed, "cache", "local")
    plain = run_step(script, "daskseg", detailed, "cache", "plain")
    dask_compute = run_step(script, "daskseg", detailed, "cache", "plain", "compute")
    theirs = run_step(script, "highdicom", detailed)
    print(f"\nThe same with detail in every tile ({os.path.getsize(detailed) / 2**20:.1f} MiB)")
    for name, result in (("local_cluster()", local), ("plain LocalCluster", plain),
                         ("plain, .compute()", dask_compute)):
        print(f"  daskseg on {name:18s} {result['time']:6.2f} s  peak {gib(result['peak_rss'])}  "
              f"({theirs['time'] / result['time']:.2f}x faster than highdicom"
              f"{', target >= 1.6x' if result is not dask_compute else ''})")
    same = local["checksum"] == plain["checksum"] == dask_compute["checksum"] == theirs["checksum"]
    print(f"  highdicom get_total_pixel_matrix: {theirs['time']:6.2f} s  "
          f"peak {gib(theirs['peak_rss'])}; same labels: {same}")
    if quick:
        return

    seg64 = str(ensure_seg(65536, 3))
    big = run_step(script, "to_zarr", seg64, str(OUT / "decoded-65536.zarr"))
    print("\nto_zarr of the 65536 x 65536 three-segment SEG, workers limited to 600 MiB each")
    print(f"  {big['time']:.1f} s, peak {gib(big['peak_rss'])} for the whole process tree; "
          f"the label image is {gib(big['mask_bytes'])}; region equal to highdicom's: "
          f"{big['equal']}")


if __name__ == "__main__":
    main()
