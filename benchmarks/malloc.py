"""Codec speed on workers by who started the cluster, with and without daskseg's malloc plugin.

Usage::

    .venv/bin/python benchmarks/malloc.py [--repeat 3]

In one run, on 2 single-threaded worker processes each: a plain ``LocalCluster`` (its nannies
set ``MALLOC_TRIM_THRESHOLD_=65536``) without and with daskseg's worker plugin, daskseg's
``local_cluster()`` (the variable unset), and ``dask scheduler`` + two ``dask worker`` processes
with the plugin. Each encodes the same detailed 512 x 512 label frames with JPEG 2000 (64 tasks
of 16 frames) and prints the time per frame per worker. First, without a cluster: one process
started with the nannies' variable encodes 40 frames before and after the plugin's ``mallopt``,
and one without the variable (the least noisy comparison on a shared machine).
"""

from __future__ import annotations

import argparse
import pathlib
import subprocess
import sys
import time

import numpy as np

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))

TASKS, FRAMES = 64, 16


def encode_frames(seed: int) -> int:
    """JPEG 2000 encode FRAMES detailed label frames (made once per worker); the bytes' total."""
    from distributed import get_worker

    from daskseg._codecs import CODECS
    from daskseg.synthetic import make_detailed_mask

    worker = get_worker()
    frames = getattr(worker, "_benchmark_frames", None)
    if frames is None:  # outside the timing's concern: the warm-up makes them
        block = make_detailed_mask(512 * FRAMES, 512, 5, chunks=512 * FRAMES).compute(
            scheduler="sync")
        frames = worker._benchmark_frames = [
            block[i * 512:(i + 1) * 512].copy() for i in range(FRAMES)]
    codec = CODECS["1.2.840.10008.1.2.4.90"]
    return sum(len(codec.encode(frame, 8)) for frame in frames) + seed * 0


def in_process() -> None:
    """Run in a child: per-frame JPEG 2000 time before and after the plugin's settings."""
    from daskseg._codecs import CODECS
    from daskseg._malloc import MALLOC_SETTINGS, _set_malloc
    from daskseg.synthetic import make_detailed_mask

    codec = CODECS["1.2.840.10008.1.2.4.90"]
    block = make_detailed_mask(512 * 40, 512, 5, chunks=512 * 40).compute(scheduler="sync")
    frames = [block[i * 512:(i + 1) * 512].copy() for i in range(40)]

    def run() -> float:
        start = time.perf_counter()
        for frame in frames:
            codec.encode(frame, 8)
        return (time.perf_counter() - start) / len(frames) * 1000

    run()
    before = [run() for _ in range(3)]
    _set_malloc(**MALLOC_SETTINGS)
    after = [run() for _ in range(3)]
    print(f"{min(before):.2f}-{max(before):.2f} ms per frame; after mallopt "
          f"{min(after):.2f}-{max(after):.2f} ms")


def measure(client, plugin: bool) -> list[float]:
    import dask

    from daskseg._client import cluster_client
    from daskseg._malloc import malloc_settings

    with dask.config.set({"daskseg.malloc-plugin": plugin}), cluster_client(client):
        pass  # registers the plugin (or not), as write_segmentation does
    client.run(lambda: __import__("daskseg._codecs") and __import__("imagecodecs"))
    client.gather(client.map(encode_frames, range(8), pure=False))  # warm up: frames made
    times = []
    for _ in range(ARGS.repeat):
        start = time.perf_counter()
        client.gather(client.map(encode_frames, range(TASKS), pure=False))
        times.append((time.perf_counter() - start) * 1000 * 2 / (TASKS * FRAMES))
    print(f"    settings on the workers: {set(map(str, client.run(malloc_settings).values()))}")
    return times


def report(name: str, times: list[float]) -> None:
    print(f"  {name:55s} {min(times):.2f}-{max(times):.2f} ms per frame per worker")


def main() -> None:
    from distributed import Client, LocalCluster

    from daskseg import local_cluster

    import os

    for name, env in (("MALLOC_TRIM_THRESHOLD_=65536", {"MALLOC_TRIM_THRESHOLD_": "65536"}),
                      ("variable unset", {})):
        environ = {k: v for k, v in os.environ.items() if k != "MALLOC_TRIM_THRESHOLD_"}
        output = subprocess.run([sys.executable, __file__, "--in-process"], env={**environ, **env},
                                capture_output=True, text=True, check=True).stdout.strip()
        print(f"  one process, {name:30s} {output}")
    print(f"JPEG 2000 encode of detailed 512 x 512 label frames, {TASKS * FRAMES} frames, "
          f"2 workers x 1 thread, {ARGS.repeat} repeats")
    for plugin in (False, True):
        # A fresh cluster each: the plugin, once registered, stays for the scheduler's life.
        with LocalCluster(n_workers=2, threads_per_worker=1, dashboard_address=None) as cluster, \
                Client(cluster) as client:
            report(f"LocalCluster(), plugin {'on' if plugin else 'off'}", measure(client, plugin))
    with local_cluster(2, dashboard_address=None) as cluster, Client(cluster) as client:
        report("daskseg.local_cluster(), plugin off", measure(client, False))
    port = 8786 + 17
    procs = [subprocess.Popen([sys.executable, "-m", "distributed.cli.dask_scheduler",
                               "--port", str(port), "--dashboard-address", ":0"],
                              stderr=subprocess.DEVNULL)]
    try:
        time.sleep(2)
        procs += [subprocess.Popen([sys.executable, "-m", "distributed.cli.dask_worker",
                                    f"tcp://127.0.0.1:{port}", "--nthreads", "1",
                                    "--dashboard-address", ":0"], stderr=subprocess.DEVNULL)
                  for _ in range(2)]
        with Client(f"tcp://127.0.0.1:{port}") as client:
            client.wait_for_workers(2, timeout=60)
            report("dask scheduler + 2 dask worker, plugin off", measure(client, False))
            # Registered now: setup runs on the workers already there.
            report("dask scheduler + 2 dask worker, plugin on", measure(client, True))
    finally:
        for proc in reversed(procs):
            proc.terminate()
            proc.wait()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--in-process", action="store_true", help=argparse.SUPPRESS)
    ARGS = parser.parse_args()
    np.seterr(all="ignore")
    if ARGS.in_process:
        in_process()
    else:
        main()
