"""One SEG per source series: a later result for a series already answered replaces the earlier one.

Why: a study is sometimes processed twice: sent again in full after a partial copy was released by hand, or
simply routed to the node twice. Each run makes a SEG with new UIDs, so the PACS would show two SEGs for one
CT series, one of them perhaps of half the slices. The node therefore gives every later SEG of a source series
the Series and SOP Instance UIDs of the first SEG it sent for that series; a PACS that overwrites instances
it already holds (Orthanc: ``"OverwriteInstances": true``) then keeps exactly one SEG, the newest. One SEG per
source series is what the pipeline writes, so the UIDs identify "the spleen result of that series".

The registry (``work_dir/seg_series.json``) maps each source Series Instance UID to the SEG UIDs sent for it.
"""

from __future__ import annotations

import json
import logging
import threading
from dataclasses import dataclass
from pathlib import Path

from pydicom import dcmread
from pydicom.uid import SegmentationStorage

from spleenseg.atomic import atomic_file

log = logging.getLogger("deploy_app.node")

REGISTRY_NAME = "seg_series.json"


@dataclass
class Replacement:
    """A SEG file that was given the UIDs of an earlier result for the same source series."""

    file: Path
    source_series_uid: str
    earlier_job_id: str


class ResultRegistry:
    """Source series -> the SEG sent for it. Thread-safe; saved atomically on every change."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._lock = threading.Lock()
        self._entries: dict[str, dict[str, str]] = {}
        if path.is_file():
            try:
                self._entries = json.loads(path.read_text())
            except (OSError, ValueError) as exc:  # start afresh: a later SEG is then sent as a new one
                log.error("%s: unreadable (%s); later results are sent as new SEGs", path, exc)

    def adopt(self, files: list[Path], job_id: str) -> list[Replacement]:
        """Give each SEG in ``files`` the UIDs of the earlier SEG of its source series (rewriting the file), or
        register it as that series' result. Called before sending, so a retry finds the same UIDs."""
        replaced = []
        with self._lock:
            changed = False
            for path in files:
                ds = dcmread(path, stop_before_pixels=True)
                if ds.SOPClassUID != SegmentationStorage or "ReferencedSeriesSequence" not in ds:
                    continue
                source = str(ds.ReferencedSeriesSequence[0].SeriesInstanceUID)
                earlier = self._entries.get(source)
                if earlier is None:
                    self._entries[source] = {"series_instance_uid": str(ds.SeriesInstanceUID),
                                             "sop_instance_uid": str(ds.SOPInstanceUID), "job_id": job_id}
                    changed = True
                elif earlier["sop_instance_uid"] != str(ds.SOPInstanceUID):
                    _set_uids(path, earlier["series_instance_uid"], earlier["sop_instance_uid"])
                    replaced.append(Replacement(path, source, earlier["job_id"]))
            if changed:
                with atomic_file(self.path) as tmp:
                    tmp.write_text(json.dumps(self._entries, indent=2))
        return replaced


def _set_uids(path: Path, series_uid: str, sop_uid: str) -> None:
    """Rewrite a SEG file with other Series / SOP Instance UIDs (everything else as the pipeline wrote it)."""
    ds = dcmread(path)
    ds.SeriesInstanceUID = series_uid
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = sop_uid
    with atomic_file(path) as tmp:
        ds.save_as(tmp, enforce_file_format=True)
