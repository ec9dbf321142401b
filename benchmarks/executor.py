"""Benchmark of DaskExecutor against distributed's Client.get_executor() and a process pool.

Usage::

    .venv/bin/python benchmarks/executor.py

On one 2-process LocalCluster it prints the milliseconds per trivial ``submit`` of DaskExecutor
and ``Client.get_executor()``, and the time of highdicom's Segmentation of an 8192 x 8192 label
mask (five segments, BINARY, JPEG 2000 lossless, 512-pixel tiles, TILED_FULL) with
``workers=0``, a ``ProcessPoolExecutor(2)``, ``Client.get_executor()`` and DaskExecutor (best of
three rounds), checking that each gives the same PixelData as ``workers=0``.
"""

from __future__ import annotations

import argparse
import time
from concurrent.futures import ProcessPoolExecutor

import highdicom as hd
from distributed import Client

from daskseg import DaskExecutor, local_cluster
from daskseg.synthetic import make_segment_descriptions, make_slide, make_tissue_mask

N_SUBMITS = 3000


def trivial(x):
    return x


def ms_per_submit(executor) -> float:
    executor.submit(trivial, -1).result()  # warm up
    best = float("inf")
    for repeat in range(3):
        # New arguments each time: the stock executor's pure=True would otherwise return
        # cached results of identical earlier calls.
        values = range(repeat * N_SUBMITS, (repeat + 1) * N_SUBMITS)
        start = time.perf_counter()
        futures = [executor.submit(trivial, i) for i in values]
        assert [f.result() for f in futures] == list(values)
        best = min(best, (time.perf_counter() - start) / N_SUBMITS * 1e3)
        del futures
    return best


def segmentation_time(source, labels, descriptions, workers) -> tuple[float, bytes]:
    start = time.perf_counter()
    seg = hd.seg.Segmentation(
        [source], labels[None], "BINARY", descriptions, hd.UID(), 1, hd.UID(), 1,
        "m", "m", "1", "1", transfer_syntax_uid="1.2.840.10008.1.2.4.90",
        tile_pixel_array=True, tile_size=(512, 512), dimension_organization_type="TILED_FULL",
        omit_empty_frames=False, workers=workers,
    )
    return time.perf_counter() - start, seg.PixelData


def main() -> None:
    # Arguments checked (--help, a typo) before the work starts: it takes none.
    argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0]).parse_args()
    with local_cluster(2) as cluster, Client(cluster) as client:
        dask_executor = DaskExecutor(client)
        client_executor = client.get_executor()
        ours = ms_per_submit(dask_executor)
        stock = ms_per_submit(client_executor)
        print(f"trivial submit ({N_SUBMITS} calls, best of 3), 2-process LocalCluster:")
        print(f"  DaskExecutor:          {ours:.3f} ms per submit")
        print(f"  Client.get_executor(): {stock:.3f} ms per submit")
        print(f"  overhead ratio: {stock / ours:.1f}x lower (target >= 10x)")

        size = 8192
        labels = make_tissue_mask(size, size, 5).compute()
        source = make_slide(size, size, tile_size=(512, 512))
        descriptions = make_segment_descriptions(5)
        serial_pixels = None
        times: dict[str, float] = {}
        with ProcessPoolExecutor(2) as pool:
            pool.submit(int).result()  # start the processes outside the timing
            executors = {
                "workers=0": 0,
                "ProcessPoolExecutor(2)": pool,
                "Client.get_executor()": client_executor,
                "DaskExecutor": dask_executor,
            }
            # Best of three, in rounds over all four, so that a passing load on the machine
            # does not fall on one of them alone.
            for _ in range(3):
                for name, workers in executors.items():
                    seconds, pixels = segmentation_time(source, labels, descriptions, workers)
                    serial_pixels = serial_pixels or pixels  # workers=0 runs first
                    assert pixels == serial_pixels, name
                    times[name] = min(times.get(name, float("inf")), seconds)
        dask_executor.shutdown()

        print(f"\nhighdicom Segmentation, {size} x {size} label mask, 5 segments, BINARY, "
              "JPEG 2000 lossless, 512 tiles, TILED_FULL (best of 3; PixelData identical in "
              "all runs):")
        for name, seconds in times.items():
            print(f"  {name:24s} {seconds:6.2f} s")
        ratio = times["DaskExecutor"] / times["ProcessPoolExecutor(2)"]
        print(f"  DaskExecutor / process pool: {ratio:.2f} (target <= 1.1)")


if __name__ == "__main__":
    main()
