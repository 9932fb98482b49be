"""Functions the bundle borrows from the ``spleenseg`` library when it is installed, and skips when it is not.

Why: the bundle must run on its own (only what ``configs/metadata.json`` declares), yet a few extras, the
learning-curve PNG and the patient-left check of evaluation masks, have their one implementation in the
project library. Without the library the extra is skipped with one WARNING naming what and why, and the run
goes on.
"""

from __future__ import annotations

import logging
from typing import Any, Callable

from monai.utils import optional_import

logger = logging.getLogger(__name__)
_warned: set[str] = set()


def library_function(module: str, name: str, skipped: str, still: str) -> Callable[..., Any] | None:
    """``module.name`` from the installed library, or ``None`` after one WARNING per process, e.g.
    "learning-curve PNG skipped: the spleenseg package is not installed; metrics.json and metrics.csv are
    written" (``skipped``: what is left out; ``still``: what the run does anyway)."""
    function, found = optional_import(module, name=name)
    if found:
        return function
    key = f"{module}.{name}"
    if key not in _warned:
        _warned.add(key)
        package = module.split(".")[0]
        logger.warning("%s: the %s package is not installed; %s", skipped, package, still)
    return None
