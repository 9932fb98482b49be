"""MSD-style datasets: build (validated pairs, seeded split, dataset.json) and download (MONAI, MD5-checked).

Public API::

    from spleenseg.dataset import build_dataset, download_msd, split_cases, validate_pair
"""

from __future__ import annotations

from spleenseg.dataset.build import Pair, build_dataset, pair_files, split_cases, validate_pair
from spleenseg.dataset.download import MSD_SPLEEN_MD5, MSD_SPLEEN_URL, download_msd

__all__ = ["MSD_SPLEEN_MD5", "MSD_SPLEEN_URL", "Pair", "build_dataset", "download_msd", "pair_files",
           "split_cases", "validate_pair"]
