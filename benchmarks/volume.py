"""Benchmark of SEGs of CT series: write_segmentation and read_segmentation against highdicom and dcmqi.

Usage::

    .venv/bin/python benchmarks/volume.py            # the sizes of issue #11
    .venv/bin/python benchmarks/volume.py --quick    # smaller sizes, a minute or two

A synthetic CT series of 300 slices of 512 x 512 and a label volume of 117 segments (one
box-shaped structure each, as TotalSegmentator's organs), as in issue #11. daskseg runs on a
2-process LocalCluster that is already running (started and warmed up on a small case before
the timing); highdicom runs serially for native BINARY and with ProcessPoolExecutor(2) for
JPEG 2000. As a pipeline writes case after case, each write step writes the same case five
times in a row in one process (daskseg on the same cluster; highdicom with the same pool, the
Segmentation deleted and garbage collected between cases), so that a process's one-time costs
do not decide a per-case figure: highdicom loads its JSON tables of the standard on its first
Segmentation, and a new cluster's workers first grow their memory to full-size blocks (their
first one or two full-size cases took 0.51-0.59 s where the later ones took 0.46-0.51 s, in
LABELMAP JPEG 2000). The time printed is the median of the five, all five are listed, and the
speed-up is the ratio of medians, printed next to the ratio of the first cases. For LABELMAP
JPEG 2000, one more step writes the case in turns with the codec floor on the same two workers
(each encoding half the SEG's frames, cut beforehand, at once): the ratio of each write to the
floor beside it is the writer's own overhead, whichever spell of a shared machine it met; and
another writes it in turns with highdicom (each side warm, highdicom's two processes driven from
a process of its own), the order swapped every turn: the median of the turns' ratios puts both
through the same spells, where the separate steps' ratio of medians moved from 1.7x to 2.4x
between two runs of one evening.

For native BINARY, dcmqi's itkimage2segimage (pip install dcmqi) also writes the case, once
(each run is a fresh process, as when a pipeline calls the command): from the series saved with
pixel data in a folder, the labels as NIfTI in the series' geometry and a metadata JSON of the
117 segments, all made once under benchmarks/out/ and outside its timing, which covers the
command's run only. Its SEG is read back by highdicom against the labels. Skipped when the
command is not installed.

Reading back: the SEG into a label volume in memory, daskseg's ``to_numpy`` on the running cluster
against highdicom's segread + get_pixels_by_source_instance. Then the 8x larger case: 1,200
slices of 1024 x 1024 from a Zarr array (never whole in memory), LABELMAP native, daskseg only.

Each measured step runs in its own process; its peak memory is taken over the whole process
tree (workers, pool processes, dcmqi's command included), as two sums: of the resident set
(RSS, which counts shared library pages once in every process), sampled over the whole step,
and of the proportional set (PSS, which shares them out; Linux, else the RSS stands in),
sampled during one more case run after the timed ones (one more write, read or dcmqi run):
reading PSS stalls the processes it reads, and slowed the timed cases by 13-20% (see
``_common.run_step``). The 8x case is sampled for both throughout: its figure is memory.
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import json
import os
import pathlib
import shutil
import statistics
import subprocess
import sys
import time

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))

from _common import OUT, emit, peaks, pss_window, run_step  # noqa: E402

NATIVE = "1.2.840.10008.1.2.1"
J2K = "1.2.840.10008.1.2.4.90"
FULL = {"case": (300, 512, 117), "large": (1200, 1024, 117)}
QUICK = {"case": (60, 256, 117), "large": (240, 512, 117)}
CASES = 5  # each write step writes the case this many times in a row, as a pipeline does
TURNS = 6  # LABELMAP JPEG 2000 writes and codec floors, in turns
PAIR_TURNS = 8  # LABELMAP JPEG 2000 writes of daskseg and highdicom, in turns


def _labels_path(slices: int, size: int, segments: int) -> pathlib.Path:
    import numpy as np

    from daskseg.synthetic import make_label_volume

    OUT.mkdir(exist_ok=True)
    path = OUT / f"labels-{slices}-{size}-{segments}.npy"
    if not path.exists():
        np.save(path, make_label_volume(slices, size, size, segments))
    return path


def _series(slices: int, size: int, pixel_data: bool = False):
    from daskseg.synthetic import make_ct_series

    return make_ct_series(slices, size, size, pixel_spacing=(0.8, 0.8), pixel_data=pixel_data)


def _case(slices: int, size: int, segments: int, segmentation_type: str = "BINARY"):
    import numpy as np

    from daskseg.synthetic import make_segment_descriptions

    labels = np.load(_labels_path(slices, size, segments))
    series = _series(slices, size)
    descriptions = make_segment_descriptions(segments, segmentation_type=segmentation_type)
    return series, labels, descriptions


def _large_labels(slices: int, size: int, segments: int) -> pathlib.Path:
    """A Zarr label volume made slab by slab (boxes as make_label_volume), never whole in memory."""
    import numpy as np
    import zarr

    path = OUT / f"labels-{slices}-{size}-{segments}.zarr"
    if path.exists():
        return path
    rng = np.random.default_rng(0)
    height, width = max(1, size // 10), max(1, size // 10)
    boxes = []
    for segment in range(1, segments + 1):
        depth = int(rng.integers(1, max(2, min(60 * slices // 300, slices))))
        z = int(rng.integers(0, max(1, slices - depth)))
        y, x = (int(rng.integers(0, max(1, size - height))),
                int(rng.integers(0, max(1, size - width))))
        boxes.append((segment, z, depth, y, x))
    array = zarr.create_array(str(path), shape=(slices, size, size), chunks=(16, size, size),
                              dtype=np.uint8)
    for start in range(0, slices, 16):
        slab = np.zeros((min(16, slices - start), size, size), np.uint8)
        for segment, z, depth, y, x in boxes:
            lo, hi = max(z, start), min(z + depth, start + len(slab))
            if lo < hi:
                slab[lo - start : hi - start, y : y + height, x : x + width] = segment
        array[start : start + len(slab)] = slab
    return path


def _warm(client, output: str, transfer_syntax: str = NATIVE, read: bool = False) -> None:
    """A running pipeline's cluster and client have imported and loaded what they use once:
    the writer (and the reader, for a pipeline that reads)."""
    from daskseg import open_segmentation, write_segmentation
    from daskseg.synthetic import make_ct_series, make_label_volume, make_segment_descriptions

    write_segmentation(
        make_label_volume(4, 64, 64, 3), make_ct_series(4, 64, 64), make_segment_descriptions(3),
        output, transfer_syntax_uid=transfer_syntax, client=client, overwrite=True,
    )
    if read:
        open_segmentation(output).to_numpy(combine_segments=True, client=client)


def step_daskseg(segmentation_type: str, transfer_syntax: str, output: str, *size: str) -> None:
    from distributed import Client

    from daskseg import local_cluster, write_segmentation

    series, labels, descriptions = _case(*map(int, size), segmentation_type)
    times = []
    with local_cluster(2, memory_limit="4GiB") as cluster, Client(cluster) as client:
        _warm(client, output + ".warm.dcm", transfer_syntax)
        for case in range(CASES + 1):
            with pss_window() if case == CASES else contextlib.nullcontext():
                start = time.perf_counter()
                write_segmentation(
                    labels, series, descriptions, output, segmentation_type=segmentation_type,
                    transfer_syntax_uid=transfer_syntax, client=client, overwrite=True,
                )
                if case < CASES:
                    times.append(time.perf_counter() - start)
    emit({**_times(times), "size": os.path.getsize(output)})


def step_highdicom(segmentation_type: str, transfer_syntax: str, output: str, *size: str) -> None:
    from concurrent.futures import ProcessPoolExecutor

    series, labels, descriptions = _case(*map(int, size), segmentation_type)
    pool = ProcessPoolExecutor(2) if transfer_syntax != NATIVE else None
    if pool is not None:
        pool.submit(int).result()  # start the processes outside the timing
    times = []
    for case in range(CASES + 1):
        with pss_window() if case == CASES else contextlib.nullcontext():
            elapsed, frames = _highdicom_write(pool if pool is not None else 0, series, labels,
                                               descriptions, segmentation_type, transfer_syntax,
                                               output)
            if case < CASES:
                times.append(elapsed)
    if pool is not None:
        pool.shutdown()
    emit({**_times(times), "frames": frames})


def _load_frames_on_worker(labels_path: str | None, segments: int = 0, share: int = 0,
                           shares: int = 1, dask_worker=None) -> None:
    """Keep this worker's share of the SEG's frames (of every ``shares``-th non-empty slice from
    ``share``), cut as the writer cuts LABELMAP frames, and their FrameSpec, for the floor's
    turns; None drops them. On the worker object: functions of this script reach the workers
    pickled by value, with globals of their own."""
    import numpy as np

    from daskseg.encode import segment_frame
    from daskseg.plan import FrameSpec

    if labels_path is None:
        dask_worker.benchmark_frames = None
        return
    labels = np.load(labels_path)
    spec = FrameSpec("LABELMAP", segments, False, *labels.shape[1:], J2K, 8, 255, False)
    slices = [plane for plane in labels if plane.any()][share::shares]
    dask_worker.benchmark_frames = ([segment_frame(plane, spec, 0) for plane in slices], spec)


def _encode_frames_on_worker() -> float:
    """The codec's time for this worker's frames."""
    from distributed import get_worker

    from daskseg.encode import encode_frame

    frames, spec = get_worker().benchmark_frames
    start = time.perf_counter()
    for frame in frames:
        encode_frame(frame, spec)
    return time.perf_counter() - start


def step_floor_turns(output: str, *size: str) -> None:
    """LABELMAP JPEG 2000 writes and the codec floor on the same two workers, in turns.

    The floor: each worker encodes half of the SEG's frames (the non-empty slices, cut
    beforehand), both at once, on its task thread; the time is the slower one's. With each
    write beside a floor, the ratio is the writer's own overhead, whatever the machine's spell
    (the same write took 0.47-0.77 s within one hour).
    """
    from distributed import Client

    from daskseg import local_cluster, write_segmentation

    slices, edge, segments = map(int, size)
    series, labels, descriptions = _case(slices, edge, segments, "LABELMAP")
    writes: list[float] = []
    floors: list[float] = []
    with local_cluster(2, memory_limit="4GiB") as cluster, Client(cluster) as client:
        _warm(client, output + ".warm.dcm", J2K)
        workers = sorted(client.scheduler_info()["workers"])
        for share, address in enumerate(workers):
            client.run(_load_frames_on_worker, str(_labels_path(slices, edge, segments)),
                       segments, share, len(workers), workers=[address])
        for _ in range(TURNS + 1):
            start = time.perf_counter()
            write_segmentation(labels, series, descriptions, output,
                               segmentation_type="LABELMAP", transfer_syntax_uid=J2K,
                               client=client, overwrite=True)
            writes.append(time.perf_counter() - start)
            futures = [client.submit(_encode_frames_on_worker, workers=[address], pure=False,
                                     allow_other_workers=False) for address in workers]
            floors.append(max(client.gather(futures)))
        client.run(_load_frames_on_worker, None)
    # The first write and floor (new buffers in the workers) are left out.
    ratios = [write / floor for write, floor in zip(writes[1:], floors[1:])]
    emit({"writes": writes[1:], "floors": floors[1:], "ratio": statistics.median(ratios)})


def _highdicom_write(workers, series, labels, descriptions, segmentation_type: str,
                     transfer_syntax: str, output: str) -> tuple[float, int]:
    """One highdicom write of the case, its time and the SEG's frames; its objects are freed
    after it, as a pipeline's next case starts without them."""
    import highdicom as hd

    start = time.perf_counter()
    seg = hd.seg.Segmentation(
        series, labels, segmentation_type, descriptions, hd.UID(), 1, hd.UID(), 1, "m", "m",
        "1", "1", transfer_syntax_uid=transfer_syntax, workers=workers,
    )
    seg.save_as(output)
    elapsed = time.perf_counter() - start
    frames = int(seg.NumberOfFrames)
    del seg
    gc.collect()
    return elapsed, frames


def step_highdicom_serve(segmentation_type: str, transfer_syntax: str, output: str,
                         *size: str) -> None:
    """highdicom with ProcessPoolExecutor(2), in a process of its own, writing the case each
    time a line comes on stdin (its time on stdout), once warm: for :func:`step_pair_turns`."""
    from concurrent.futures import ProcessPoolExecutor

    series, labels, descriptions = _case(*map(int, size), segmentation_type)
    with ProcessPoolExecutor(2) as pool:
        for _ in range(2):  # its tables of the standard loaded, its pool started
            _highdicom_write(pool, series, labels, descriptions, segmentation_type,
                             transfer_syntax, output)
        print("ready", flush=True)
        for _ in sys.stdin:
            elapsed, _ = _highdicom_write(pool, series, labels, descriptions,
                                          segmentation_type, transfer_syntax, output)
            print(elapsed, flush=True)


def step_pair_turns(segmentation_type: str, transfer_syntax: str, output: str,
                    *size: str) -> None:
    """daskseg's and highdicom's writes of the case in turns, each side warm: daskseg on its
    running cluster here, highdicom (two processes) in a process of its own, waiting between
    its writes (:func:`step_highdicom_serve`), the order swapped every turn. Both then meet the
    same spells of a shared machine, which the separate steps do not: there, one side's slow
    spell moved the ratio from 1.7x to 2.4x between two runs of one evening. daskseg's idle
    cluster stays up during highdicom's writes (0.03 s of CPU a second, see local_cluster)."""
    from distributed import Client

    from daskseg import local_cluster, write_segmentation

    series, labels, descriptions = _case(*map(int, size), segmentation_type)
    ours: list[float] = []
    theirs: list[float] = []
    server = subprocess.Popen(
        [sys.executable, __file__, "--step", "highdicom_serve", segmentation_type,
         transfer_syntax, output + ".highdicom.dcm", *size],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
    )
    assert server.stdin is not None and server.stdout is not None
    try:
        with local_cluster(2, memory_limit="4GiB") as cluster, Client(cluster) as client:
            _warm(client, output + ".warm.dcm", transfer_syntax)

            def write_ours() -> None:
                start = time.perf_counter()
                write_segmentation(labels, series, descriptions, output,
                                   segmentation_type=segmentation_type,
                                   transfer_syntax_uid=transfer_syntax, client=client,
                                   overwrite=True)
                ours.append(time.perf_counter() - start)

            def write_theirs() -> None:
                server.stdin.write("write\n")
                server.stdin.flush()
                theirs.append(float(server.stdout.readline()))

            write_ours()  # the cluster's first full-size case, left out below
            ours.clear()
            if server.stdout.readline().strip() != "ready":
                raise RuntimeError("highdicom's process did not start")
            for turn in range(PAIR_TURNS):
                for write in (write_ours, write_theirs) if turn % 2 == 0 else (
                        write_theirs, write_ours):
                    write()
    finally:
        server.stdin.close()
        server.wait()
    ratios = [their / our for our, their in zip(ours, theirs)]
    emit({"ours": ours, "theirs": theirs, "ratio": statistics.median(ratios),
          "ratios": ratios})


def _times(times: list[float]) -> dict:
    """A write step's times: all of them, their median ("time") and the first case's."""
    return {"times": times, "time": statistics.median(times), "first": times[0]}


def _dcmqi_tool() -> str | None:
    """dcmqi's itkimage2segimage: on PATH, or next to this Python (pip install dcmqi)."""
    return shutil.which("itkimage2segimage") or shutil.which(
        "itkimage2segimage", path=str(pathlib.Path(sys.executable).parent))


def _dcmqi_inputs(slices: int, size: int, segments: int) -> tuple[pathlib.Path, ...]:
    """The case as dcmqi takes it, made once under OUT: series folder, NIfTI labels, metadata."""
    import highdicom as hd
    import nibabel
    import numpy as np

    folder = OUT / f"ct-{slices}-{size}"
    if not folder.exists():
        partial = folder.with_name(folder.name + ".partial")
        shutil.rmtree(partial, ignore_errors=True)
        partial.mkdir()
        for ds in _series(slices, size, pixel_data=True):
            ds.save_as(partial / f"{ds.InstanceNumber:05d}.dcm", enforce_file_format=True)
        partial.rename(folder)
    nifti = OUT / f"labels-{slices}-{size}-{segments}.nii"  # uncompressed: no gzip in its time
    if not nifti.exists():
        # The series' geometry (the same for every make_ct_series call with these arguments);
        # highdicom's volume: slices along column x row direction, the series in that order,
        # and label frame k belongs to series[k].
        series = _series(slices, size)
        order = hd.spatial.get_dataset_sort_index(series)
        geometry = hd.VolumeGeometry.from_attributes(
            image_position=series[order[0]].ImagePositionPatient,
            image_orientation=series[0].ImageOrientationPatient, rows=size, columns=size,
            pixel_spacing=series[0].PixelSpacing,
            spacing_between_slices=float(series[0].SliceThickness), number_of_frames=slices,
            coordinate_system="PATIENT",
        )
        labels = np.load(_labels_path(slices, size, segments))
        nibabel.save(
            geometry.with_array(labels[order]).permute_spatial_axes([2, 1, 0]).to_nibabel(),
            nifti,
        )
    tissue = {"CodeValue": "85756007", "CodingSchemeDesignator": "SCT", "CodeMeaning": "Tissue"}
    metadata = OUT / f"dcmqi-{segments}.json"
    metadata.write_text(json.dumps({
        "ContentCreatorName": "Benchmark^Volume",
        "ClinicalTrialSeriesID": "Session1",
        "SeriesDescription": "Segmentation",
        "SeriesNumber": "300",
        "InstanceNumber": "1",
        "segmentAttributes": [[{
            "labelID": number,
            "SegmentLabel": f"Segment {number}",
            "SegmentAlgorithmType": "AUTOMATIC",
            "SegmentAlgorithmName": "daskseg synthetic",
            "SegmentedPropertyCategoryCodeSequence": tissue,
            "SegmentedPropertyTypeCodeSequence": tissue,
        } for number in range(1, segments + 1)]],
    }))
    return folder, nifti, metadata


def step_dcmqi(tool: str, folder: str, nifti: str, metadata: str, output: str) -> None:
    """itkimage2segimage (BINARY, native, empty frames left out: its defaults): one timed run,
    then one more for its memory (PSS)."""
    command = [tool, "--inputImageList", nifti, "--inputDICOMDirectory", folder,
               "--inputMetadata", metadata, "--outputDICOM", output]
    start = time.perf_counter()
    subprocess.run(command, check=True, stdout=subprocess.DEVNULL)
    elapsed = time.perf_counter() - start
    with pss_window():
        subprocess.run(command, check=True, stdout=subprocess.DEVNULL)
    emit({"time": elapsed, "size": os.path.getsize(output)})


def step_check_dcmqi(output: str, folder: str, *size: str) -> None:
    """dcmqi's SEG read back by highdicom against the labels (frame k: the k-th instance)."""
    import highdicom as hd
    import numpy as np
    import pydicom

    _, labels, _ = _case(*map(int, size))
    headers = [pydicom.dcmread(path, stop_before_pixels=True)
               for path in sorted(pathlib.Path(folder).glob("*.dcm"))]
    uids = [ds.SOPInstanceUID for ds in sorted(headers, key=lambda ds: ds.InstanceNumber)]
    seg = hd.seg.segread(output)
    # dcmqi leaves SpatialLocationsPreserved out, which highdicom wants unless told to ignore it.
    pixels = seg.get_pixels_by_source_instance(
        uids, combine_segments=True, ignore_spatial_locations=True,
        assert_missing_frames_are_empty=True,
    )
    emit({"equal": bool(np.array_equal(pixels, labels)), "frames": int(seg.NumberOfFrames)})


def _source_uids(output: str) -> list[str]:
    import pydicom

    # The series is made anew in each step (new UIDs): take the file's, in the order given.
    header = pydicom.dcmread(output, stop_before_pixels=True, specific_tags=["SourceImageSequence"])
    return [item.ReferencedSOPInstanceUID for item in header.SourceImageSequence]


def step_check(output: str, *size: str) -> None:
    """Read the SEG back with highdicom (an independent reader) and compare with the labels."""
    import highdicom as hd
    import numpy as np

    _, labels, _ = _case(*map(int, size))
    pixels = hd.seg.segread(output).get_pixels_by_source_instance(
        _source_uids(output), combine_segments=True, assert_missing_frames_are_empty=True,
    )
    emit({"equal": bool(np.array_equal(pixels, labels))})


def step_read_daskseg(output: str, *size: str) -> None:
    """The SEG into a label volume in memory (``to_numpy``) on a running cluster.

    The labels to compare with are made once the cluster is gone and the volume read is reduced
    to a digest, so that the step's peak memory is the reader's, as highdicom's step's is.
    """
    import hashlib

    from distributed import Client

    from daskseg import local_cluster, open_segmentation

    uids = _source_uids(output)
    with local_cluster(2, memory_limit="4GiB") as cluster, Client(cluster) as client:
        _warm(client, output + ".warm.dcm", read=True)
        start = time.perf_counter()
        pixels = open_segmentation(output).to_numpy(source_sop_instance_uids=uids,
                                                    combine_segments=True, client=client)
        elapsed = time.perf_counter() - start
        del pixels
        with pss_window():  # once more, for the memory
            pixels = open_segmentation(output).to_numpy(source_sop_instance_uids=uids,
                                                        combine_segments=True, client=client)
    read = (pixels.shape, pixels.dtype, hashlib.sha256(pixels.tobytes()).digest())
    del pixels
    _, labels, _ = _case(*map(int, size))
    expected = (labels.shape, labels.dtype, hashlib.sha256(labels.tobytes()).digest())
    emit({"time": elapsed, "equal": read == expected})


def step_read_highdicom(output: str, *size: str) -> None:
    import highdicom as hd

    uids = _source_uids(output)

    def read() -> None:
        hd.seg.segread(output).get_pixels_by_source_instance(
            uids, combine_segments=True, assert_missing_frames_are_empty=True
        )

    start = time.perf_counter()
    read()
    elapsed = time.perf_counter() - start
    gc.collect()
    with pss_window():  # once more, for the memory
        read()
    emit({"time": elapsed})


def step_large(output: str, slices: str, size: str, segments: str) -> None:
    """The 8x case: labels from Zarr, LABELMAP native; then read back and compared slab by slab.

    LABELMAP: a native BINARY SEG of 117 segments x 1,200 planes of 1024 x 1024 could hold up
    to 17 GiB of frames, beyond a native Pixel Data element, and is refused before any work.
    """
    import dask.array as da
    from distributed import Client

    from daskseg import local_cluster, read_segmentation, write_segmentation
    from daskseg.synthetic import make_ct_series, make_segment_descriptions

    n, edge, k = int(slices), int(size), int(segments)
    labels = _large_labels(n, edge, k)
    series = make_ct_series(n, edge, edge, pixel_spacing=(0.4, 0.4))
    with local_cluster(2, memory_limit="4GiB") as cluster, Client(cluster) as client:
        _warm(client, output + ".warm.dcm", read=True)  # this step reads back too
        start = time.perf_counter()
        write_segmentation(str(labels), series,
                           make_segment_descriptions(k, segmentation_type="LABELMAP"), output,
                           segmentation_type="LABELMAP", client=client, overwrite=True)
        written = time.perf_counter() - start
        start = time.perf_counter()
        read = read_segmentation(output, source_sop_instance_uids=[ds.SOPInstanceUID for ds in series],
                                 combine_segments=True)
        equal = bool(da.all(read == da.from_zarr(str(labels)).rechunk(read.chunks)).compute())
        checked = time.perf_counter() - start
    emit({"time": written, "read_and_compare": checked, "equal": equal,
          "size": os.path.getsize(output), "labels_bytes": n * edge * edge})


def _listed(times: list[float]) -> str:
    return ", ".join(f"{t:.2f}" for t in times)


def _write_times(result: dict) -> str:
    return f"median {result['time']:6.2f} s ({_listed(result['times'])})"


def _memory_ratio(theirs: dict, ours: dict) -> str:
    return (f"RSS-sum {theirs['peak_rss'] / ours['peak_rss']:.2f}x, "
            f"PSS-sum {theirs['peak_pss'] / ours['peak_pss']:.2f}x")


def _dcmqi(script: str, ours: dict, case: list[str]) -> None:
    """dcmqi's itkimage2segimage on the same case, one run (a fresh process, as a pipeline's)."""
    import importlib.util

    tool = _dcmqi_tool()
    if tool is None or importlib.util.find_spec("nibabel") is None:
        print("  dcmqi:     skipped (needs itkimage2segimage and nibabel: pip install dcmqi "
              "nibabel)")
        return
    folder, nifti, metadata = _dcmqi_inputs(*map(int, case))
    output = str(OUT / "volume-dcmqi.dcm")
    theirs = run_step(script, "dcmqi", tool, str(folder), str(nifti), str(metadata), output,
                      pss="window")
    check = run_step(script, "check_dcmqi", output, str(folder), *case)
    print(f"  dcmqi:     {theirs['time']:6.2f} s (one run)  {peaks(theirs)}  "
          f"(itkimage2segimage, {check['frames']} frames, file {theirs['size'] / 2**20:.1f} MiB, "
          f"read back equal: {check['equal']})")
    print(f"  speed-up against dcmqi {theirs['time'] / ours['time']:.2f}x (daskseg's median; its "
          f"first case {theirs['time'] / ours['first']:.2f}x), memory dcmqi / daskseg "
          f"{_memory_ratio(theirs, ours)}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--step", nargs="+", help=argparse.SUPPRESS)
    parser.add_argument("--quick", action="store_true", help="smaller sizes (a minute or two)")
    parser.add_argument("--skip-large", action="store_true", help="leave out the 8x case")
    parser.add_argument("--only-large", action="store_true", help="only the 8x case")
    args = parser.parse_args()
    if args.step:
        name, *rest = args.step
        globals()[f"step_{name}"](*rest)
        return

    sizes = QUICK if args.quick else FULL
    case = [str(v) for v in sizes["case"]]
    script = str(pathlib.Path(__file__).resolve())
    _labels_path(*sizes["case"])
    print(f"machine: {os.cpu_count()} cores; results in {OUT}")
    slices, edge, segments = sizes["case"]
    print(f"CT series {slices} x {edge} x {edge}, {segments} segments as labels; daskseg on a "
          "running 2-process LocalCluster")
    ours_path, theirs_path = str(OUT / "volume-daskseg.dcm"), str(OUT / "volume-highdicom.dcm")
    for kind, syntax, pool in [] if args.only_large else [
        ("BINARY", NATIVE, "serial"),
        ("BINARY", J2K, "ProcessPoolExecutor(2)"),
        ("LABELMAP", J2K, "ProcessPoolExecutor(2)"),
    ]:
        ours = run_step(script, "daskseg", kind, syntax, ours_path, *case, pss="window")
        check = run_step(script, "check", ours_path, *case)
        theirs = run_step(script, "highdicom", kind, syntax, theirs_path, *case,
                          pss="window")
        name = "native" if syntax == NATIVE else "JPEG 2000"
        print(f"\n{kind} {name} ({CASES} cases in a row in each process):")
        print(f"  daskseg:   {_write_times(ours)}  {peaks(ours)}  "
              f"file {ours['size'] / 2**20:.1f} MiB  read back equal: {check['equal']}")
        print(f"  highdicom: {_write_times(theirs)}  {peaks(theirs)}  ({pool}, "
              f"{theirs['frames']} frames)")
        print(f"  speed-up {theirs['time'] / ours['time']:.2f}x (medians; first cases "
              f"{theirs['first'] / ours['first']:.2f}x), memory highdicom / daskseg "
              f"{_memory_ratio(theirs, ours)}")
        if kind == "LABELMAP":
            turns = run_step(script, "floor_turns", ours_path, *case)
            print(f"  in turns on one cluster, daskseg's writes {_listed(turns['writes'])} s and "
                  "the codec alone on the same two workers (each encoding half the frames at "
                  f"once) {_listed(turns['floors'])} s: the writes are "
                  f"{turns['ratio']:.2f}x the codec (median of the turns' ratios)")
            pair = run_step(script, "pair_turns", kind, syntax, ours_path, *case)
            print(f"  in turns with highdicom (each warm; highdicom's two processes in a "
                  f"process of its own): daskseg {_listed(pair['ours'])} s, highdicom "
                  f"{_listed(pair['theirs'])} s: {pair['ratio']:.2f}x faster (median of the "
                  f"turns' ratios {_listed(pair['ratios'])})")
        if kind == "BINARY" and syntax == NATIVE:
            _dcmqi(script, ours, case)
            # Reading back the native BINARY SEG into a label volume.
            ours_read = run_step(script, "read_daskseg", ours_path, *case, pss="window")
            theirs_read = run_step(script, "read_highdicom", ours_path, *case, pss="window")
            print("  read into a label volume:")
            print(f"    daskseg:   {ours_read['time']:6.2f} s  {peaks(ours_read)}  "
                  f"equal: {ours_read['equal']}")
            print(f"    highdicom: {theirs_read['time']:6.2f} s  {peaks(theirs_read)}  "
                  "(segread + get_pixels_by_source_instance)")
            print(f"    speed-up {theirs_read['time'] / ours_read['time']:.2f}x, memory "
                  f"highdicom / daskseg {_memory_ratio(theirs_read, ours_read)}")
    if args.skip_large:
        return
    slices, edge, segments = sizes["large"]
    _large_labels(slices, edge, segments)
    large = run_step(script, "large", str(OUT / "volume-large.dcm"), str(slices), str(edge),
                     str(segments), pss=True)
    print(f"\nlarge case: {slices} x {edge} x {edge} from Zarr ({large['labels_bytes'] / 2**30:.2f} "
          f"GiB of labels), LABELMAP native, daskseg:")
    print(f"  write {large['time']:6.2f} s  {peaks(large)}  file "
          f"{large['size'] / 2**20:.0f} MiB; read back and compared {large['read_and_compare']:.2f} s, "
          f"equal: {large['equal']}")


if __name__ == "__main__":
    main()
