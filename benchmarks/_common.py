"""Shared pieces of the benchmarks: peak memory of a process tree, and running a step in a child.

Each measured step runs in its own Python process, started by the benchmark script, so that its
peak memory (resident set summed over the process and all its children: Dask's nannies and
workers included) is its own and not the leftovers of an earlier step.
"""

from __future__ import annotations

import json
import pathlib
import subprocess
import sys
import threading
import time

import psutil

OUT = pathlib.Path(__file__).resolve().parent / "out"


def tree_rss(process: psutil.Process) -> int:
    """Resident set size of a process and all its descendants, in bytes."""
    total = 0
    for p in [process, *process.children(recursive=True)]:
        try:
            total += p.memory_info().rss
        except psutil.Error:
            pass
    return total


def run_step(script: str, *args: str) -> dict:
    """Run ``python script --step ARGS`` and return its JSON result plus ``peak_rss`` (bytes)."""
    command = [sys.executable, script, "--step", *args]
    child = subprocess.Popen(command, stdout=subprocess.PIPE, text=True)
    process = psutil.Process(child.pid)
    peak = 0
    done = threading.Event()

    def sample() -> None:
        nonlocal peak
        while not done.is_set():
            try:
                peak = max(peak, tree_rss(process))
            except psutil.Error:
                pass
            time.sleep(0.05)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    output, _ = child.communicate()
    done.set()
    sampler.join()
    if child.returncode != 0:
        raise RuntimeError(f"{' '.join(command)} failed with exit code {child.returncode}")
    result = json.loads(output.strip().splitlines()[-1])
    result["peak_rss"] = peak
    return result


def emit(result: dict) -> None:
    """Print a step's result as the last line of its output, for run_step to read."""
    print(json.dumps(result), flush=True)


def gib(n_bytes: float) -> str:
    return f"{n_bytes / 2**30:.2f} GiB"
