"""Benchmark of write_segmentation_pyramid: a 32768 x 32768 mask to a full pyramid.

Usage::

    .venv/bin/python benchmarks/pyramid.py

Prints, on a 2-process LocalCluster, the time of level 0 alone (write_segmentation) and of the
full pyramid (factors 2, 4, ... down to one tile), and the peak memory of each (resident set
summed over the process and its children). Label mask in an on-disk Zarr store, three segments,
BINARY, JPEG 2000 lossless, 512-pixel tiles, TILED_FULL.
"""

from __future__ import annotations

import argparse
import os
import pathlib
import shutil
import sys
import time

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))

from _common import OUT, emit, gib, run_step  # noqa: E402

SIZE, SEGMENTS, TILE = 32768, 3, 512
J2K = "1.2.840.10008.1.2.4.90"
FACTORS = [2.0 ** k for k in range(1, 7)]  # down to 512 pixels: one tile


def step_run(zarr_path: str, what: str) -> None:
    from distributed import Client

    from daskseg import local_cluster, write_segmentation, write_segmentation_pyramid
    from daskseg.synthetic import make_segment_descriptions, make_slide

    source = make_slide(SIZE, SIZE, tile_size=(TILE, TILE))
    descriptions = make_segment_descriptions(SEGMENTS)
    folder = OUT / f"pyramid-{what}"
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    options = dict(transfer_syntax_uid=J2K, dimension_organization_type="TILED_FULL")
    with local_cluster(2, memory_limit="1GiB") as cluster, \
            Client(cluster) as client:
        start = time.perf_counter()
        if what == "level0":
            write_segmentation(zarr_path, source, descriptions, folder / "level-0.dcm",
                               client=client, **options)
            n_files = 1
        else:
            n_files = len(write_segmentation_pyramid(
                zarr_path, [source], descriptions, folder, downsample_factors=FACTORS,
                client=client, **options,
            ))
        elapsed = time.perf_counter() - start
    size = sum(p.stat().st_size for p in folder.iterdir())
    emit({"time": elapsed, "files": n_files, "bytes": size})


def main() -> None:
    if len(sys.argv) > 2 and sys.argv[1] == "--step":
        step_run(*sys.argv[3:])
        return
    # Arguments checked (--help, a typo) before minutes of work start: it takes none.
    argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0]).parse_args()
    from write import make_zarr

    script = str(pathlib.Path(__file__).resolve())
    mask = str(make_zarr(SIZE, SEGMENTS))
    level0 = run_step(script, "run", mask, "level0")
    pyramid = run_step(script, "run", mask, "pyramid")
    print(f"machine: {os.cpu_count()} cores; {SIZE} x {SIZE} label mask (Zarr), {SEGMENTS} "
          "segments, BINARY, JPEG 2000 lossless, 512 tiles, TILED_FULL, 2 worker processes")
    print(f"  level 0 alone: {level0['time']:6.1f} s, peak {gib(level0['peak_rss'])}")
    print(f"  full pyramid:  {pyramid['time']:6.1f} s, peak {gib(pyramid['peak_rss'])}, "
          f"{pyramid['files']} levels (factors {', '.join(f'{f:g}' for f in FACTORS)}), "
          f"{pyramid['bytes'] / 2**20:.1f} MiB")
    print(f"  pyramid / level 0: {pyramid['time'] / level0['time']:.2f}x the time; the mask is "
          f"{gib(SIZE * SIZE)}")


if __name__ == "__main__":
    main()
