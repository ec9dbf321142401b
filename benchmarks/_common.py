"""Shared pieces of the benchmarks: peak memory of a process tree, and running a step in a child.

Each measured step runs in its own Python process, started by the benchmark script, so that its
peak memory (summed over the process and all its children: Dask's nannies and workers included)
is its own and not the leftovers of an earlier step. Two sums are sampled: the resident set
(RSS), which counts a shared page once in every process that maps it (libpython, numpy and the
codecs' libraries in each Dask worker), and the proportional set (PSS, Linux), which splits a
shared page among the processes that share it, so that its sum over a tree is the memory the
tree holds.
"""

from __future__ import annotations

import contextlib
import json
import pathlib
import subprocess
import sys
import threading
import time
from collections.abc import Iterator

import psutil

OUT = pathlib.Path(__file__).resolve().parent / "out"


def tree_memory(process: psutil.Process, pss: bool = True) -> tuple[int, int]:
    """RSS and PSS of a process and all its descendants, each summed, in bytes.

    PSS comes from /proc/PID/smaps_rollup (psutil's ``memory_full_info``, about 0.5 ms a
    process); where a platform has none, or ``pss`` is False, the RSS stands in for it.
    """
    rss = total_pss = 0
    for p in [process, *process.children(recursive=True)]:
        try:
            info = p.memory_full_info() if pss else p.memory_info()
        except psutil.AccessDenied:
            try:
                info = p.memory_info()
            except psutil.Error:
                continue
        except psutil.Error:
            continue
        rss += info.rss
        total_pss += getattr(info, "pss", info.rss)
    return rss, total_pss


# Printed by a step around a case run once more, after its timed ones, for its PSS (see run_step).
PSS_ON, PSS_OFF = "#benchmark: PSS on", "#benchmark: PSS off"


@contextlib.contextmanager
def pss_window() -> Iterator[None]:
    """In a step: the PSS of the process tree is sampled while this runs (``run_step(...,
    pss="window")``). Reading PSS slows the processes it reads (see ``run_step``), so a step
    times its cases first, without it, and then runs one more case inside this window."""
    print(PSS_ON, flush=True)
    time.sleep(0.1)  # the sampler sees the line before the case starts
    try:
        yield
    finally:
        time.sleep(0.1)
        print(PSS_OFF, flush=True)


def run_step(script: str, *args: str, pss: bool | str = False) -> dict:
    """Run ``python script --step ARGS``; its JSON result plus ``peak_rss`` and ``peak_pss``.

    The peaks (bytes) are the largest sums over the process tree sampled every 50 ms, each
    taken on its own. The RSS is sampled over the whole step. PSS only when asked for: over the
    whole step (``pss=True``), or, with ``pss="window"``, only while the step is inside
    :func:`pss_window` (without PSS, ``peak_pss`` is the RSS peak). Reading PSS
    (/proc/PID/smaps_rollup) walks each process's memory map under its lock, which stalls the
    process's own mmap and munmap calls: sampled every 50 ms through the timed writes, it made
    the LABELMAP JPEG 2000 volume case 13% slower for daskseg (0.48 -> 0.54 s) and 20% for
    highdicom with two processes (0.94 -> 1.13 s), and the ratio between them moved with it.
    """
    command = [sys.executable, script, "--step", *args]
    child = subprocess.Popen(command, stdout=subprocess.PIPE, text=True)
    process = psutil.Process(child.pid)
    peak = peak_pss = 0
    done = threading.Event()
    reading_pss = threading.Event()
    if pss is True:
        reading_pss.set()

    def sample() -> None:
        nonlocal peak, peak_pss
        while not done.is_set():
            with_pss = reading_pss.is_set()
            try:
                rss, proportional = tree_memory(process, with_pss)
            except psutil.Error:
                pass
            else:
                peak = max(peak, rss)
                if with_pss:
                    peak_pss = max(peak_pss, proportional)
            time.sleep(0.05)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    lines = []
    assert child.stdout is not None
    for line in child.stdout:
        marker = line.strip()
        if marker not in (PSS_ON, PSS_OFF):
            lines.append(line)
        elif pss == "window" and marker == PSS_ON:  # pss=True: read throughout, markers or not
            reading_pss.set()
        elif pss == "window":
            reading_pss.clear()
    child.wait()
    done.set()
    sampler.join()
    if child.returncode != 0:
        raise RuntimeError(f"{' '.join(command)} failed with exit code {child.returncode}")
    result = json.loads("".join(lines).strip().splitlines()[-1])
    result["peak_rss"] = peak
    result["peak_pss"] = peak_pss if pss else peak
    return result


def emit(result: dict) -> None:
    """Print a step's result as the last line of its output, for run_step to read."""
    print(json.dumps(result), flush=True)


def gib(n_bytes: float) -> str:
    return f"{n_bytes / 2**30:.2f} GiB"


def peaks(result: dict) -> str:
    """A step's peak memory as printed: both sums over its process tree."""
    return f"peak RSS-sum {gib(result['peak_rss'])}, PSS-sum {gib(result['peak_pss'])}"
