"""The display colour of each segment: its RecommendedDisplayCIELabValue, or a default."""

from __future__ import annotations

from collections.abc import Sequence

import highdicom as hd

# Used for segments without a recommended colour (tab10's first colours, as RGB 0-255).
_DEFAULT_RGB = [
    (31, 119, 180), (255, 127, 14), (44, 160, 44), (214, 39, 40), (148, 103, 189),
    (140, 86, 75), (227, 119, 194), (127, 127, 127), (188, 189, 34), (23, 190, 207),
]


def segment_rgb(descriptions: Sequence[hd.seg.SegmentDescription]) -> dict[int, tuple[int, int, int]]:
    """Segment number -> RGB (0-255), from RecommendedDisplayCIELabValue when present."""
    colors = {}
    for index, item in enumerate(descriptions):
        value = item.get("RecommendedDisplayCIELabValue")
        if value is not None:
            # PS3.3 C.10.7.1.1: CIELab scaled to 0-65535; highdicom converts to sRGB.
            rgb = hd.color.CIELabColor.from_dicom_value(value).to_rgb(clip=True)
            red, green, blue = (int(round(c)) for c in rgb)
            colors[int(item.SegmentNumber)] = (red, green, blue)
        else:
            colors[int(item.SegmentNumber)] = _DEFAULT_RGB[index % len(_DEFAULT_RGB)]
    return colors
