"""A pipeline's task that writes one SEG and reads it back, for workers to import."""

from __future__ import annotations


def write_case_in_task(folder: str, case: int, pass_client: bool) -> bool:
    """Write one small slide's SEG from inside a Dask task; True when it reads back equal."""
    import highdicom as hd
    import numpy as np
    from distributed import get_client

    from daskseg import write_segmentation
    from daskseg.synthetic import make_segment_descriptions, make_slide, make_tissue_mask

    labels = make_tissue_mask(256, 192, 2, chunks=64, seed=case).compute()
    options = {"client": get_client()} if pass_client else {}
    path = write_segmentation(labels, make_slide(256, 192, tile_size=(64, 64)),
                              make_segment_descriptions(2), f"{folder}/{case}.dcm", **options)
    got = hd.seg.segread(path).get_total_pixel_matrix(combine_segments=True)
    return bool(np.array_equal(got, labels))
