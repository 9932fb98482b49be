"""The bundle's spleen QA dict (``spleen_qa``, see the bundle's ``SelectSpleenComponentd``) on the app side.

Why a module of its own: the SEG writer, the report, ``make demo`` and the DICOM node all read the same dict
(flags, messages, one-line verdict), and the node must read it without importing torch or Holoscan, so this
module imports nothing heavy.
"""

from __future__ import annotations

import copy
import logging
from typing import Any

log = logging.getLogger(__name__)

#: Name of the bundle output (``metadata.json`` ``network_data_format.outputs``) and of the operator port.
QA_OUTPUT = "spleen_qa"
NO_SPLEEN_VERDICT = "no spleen found"


def unwrap_qa(value: Any) -> dict[str, Any]:
    """The plain dict from what the SDK's bundle operator emits for a ``series`` output.

    Why: it sends ``np.asarray(value)``, which wraps a dict in a 0-d object array.
    """
    item = value.item() if hasattr(value, "item") and getattr(value, "shape", None) == () else value
    if not isinstance(item, dict) or not isinstance(item.get("flags"), dict):
        raise RuntimeError(f"internal error: the bundle's {QA_OUTPUT} output is not a QA dict with flags: "
                           f"{type(item).__name__}")
    return item


def raised_flags(qa: dict[str, Any] | None) -> list[str]:
    """Names of the flags that are set, in the dict's order; none for a missing QA block."""
    return [name for name, value in ((qa or {}).get("flags") or {}).items() if value]


def settle_no_spleen(qa: dict[str, Any], mask_has_spleen: bool) -> dict[str, Any]:
    """``qa`` with ``no_spleen`` set when the mask on the source grid is empty (a copy; the input is kept).

    Why: the bundle judges on the model grid; a tiny kept component can vanish when the probability is resampled
    to the source grid and thresholded, and then there is no spleen to write either.
    """
    if mask_has_spleen or qa["flags"].get("no_spleen"):
        return qa
    out = copy.deepcopy(qa)
    out["flags"]["no_spleen"] = True
    out["messages"] = ["the mask is empty on the source grid", *out.get("messages", [])]
    out["verdict"] = NO_SPLEEN_VERDICT
    return out


def log_qa(series_uid: str, qa: dict[str, Any]) -> None:
    """One WARNING per raised flag naming the series, then the verdict with the messages it does not already
    say (INFO when nothing was raised)."""
    flags = raised_flags(qa)
    for flag in flags:
        log.warning("series %s: QA flag %s raised", series_uid, flag)
    verdict = str(qa.get("verdict", "?"))
    more = [m for m in qa.get("messages") or [] if m not in verdict]
    (log.warning if flags else log.info)("series %s: QA verdict: %s%s", series_uid, verdict,
                                         f" ({'; '.join(more)})" if more else "")


def qa_summary(qa: dict[str, Any] | None) -> dict[str, Any]:
    """Verdict and raised flags: the short form shown by ``make demo`` and the node's status."""
    return {"verdict": (qa or {}).get("verdict"), "flags": raised_flags(qa)}
