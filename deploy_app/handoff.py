"""What the app's operators hand each other, as typed values instead of attributes written onto SDK objects.

Why: the SDK's ``DICOMSeries`` and ``SelectedSeries`` describe what was *loaded and selected*; what the later
operators need (the checked volume, the instances in its slice order, the UIDs the loader generated, the mask
and its SEG) is produced on the way. Carrying it in these dataclasses keeps the SDK objects as the SDK made
them and makes every operator's input and output readable from its signature.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import highdicom as hd
import numpy as np
import pydicom

#: Output of the loader and input of the series-to-volume operator: generated UID -> its keyword
#: (StudyInstanceUID or SeriesInstanceUID), for UIDs the loader made up because the source had them blank.
GENERATED_UIDS = "generated_uids"
#: Port names of the hand-off between to_volume, the SEG writer and the report.
SERIES_VOLUME, SEG_RESULT = "series_volume", "seg_result"


@dataclass(frozen=True)
class SeriesVolume:
    """One selected series, checked: what the SEG writer and the report need besides the mask.

    ``geometry`` is highdicom's (slice, row, column) grid with its LPS affine, without the voxels (the
    decoded CT goes to the bundle operator only, and is freed after inference); ``sources[k]`` is the instance
    volume slice ``k`` was read from (so SEG frame ``k`` references it); ``generated_uids`` maps a keyword to
    the UID the loader generated for it (empty unless ``--generate-missing-uids`` filled a blank one).
    """

    geometry: hd.VolumeGeometry
    sources: tuple[pydicom.Dataset, ...]
    selection: str = ""
    generated_uids: dict[str, str] = field(default_factory=dict)

    @property
    def series_uid(self) -> str:
        return str(self.sources[0].SeriesInstanceUID)

    @property
    def affine_lps(self) -> np.ndarray:
        """(slice, row, column) index -> LPS mm."""
        return np.asarray(self.geometry.affine, dtype=np.float64)


@dataclass(frozen=True)
class SegResult:
    """The SEG writer's output for one series: the mask on the source grid and what was written for it.

    ``seg`` and ``path`` are ``None`` when no spleen was found (no SEG is written: an empty SEG would read as
    "spleen 0 mL" in a viewer); ``qa`` is the bundle's QA dict, settled against the final mask.
    """

    series: SeriesVolume
    mask: np.ndarray
    qa: dict[str, Any]
    seg: hd.seg.Segmentation | None = None
    path: Path | None = None
