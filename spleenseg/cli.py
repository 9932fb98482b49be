"""Helpers shared by the ``fire`` command lines: one clear message and a non-zero exit on user errors."""

from __future__ import annotations

import logging
import sys
import warnings
from typing import Any

import fire

from spleenseg.errors import OrientationWarning, SpleensegError


def run_fire(component: Any, name: str | None = None) -> None:
    """Run a fire CLI; turn :class:`SpleensegError` (and ``ValueError`` from option checks) into exit code 2."""
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    warnings.simplefilter("ignore", OrientationWarning)  # check_spleen_left logs it too: show it once
    try:
        fire.Fire(component, name=name)
    except SpleensegError as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(2)
