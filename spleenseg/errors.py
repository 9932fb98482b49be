"""Exceptions that command lines turn into one clear message and a non-zero exit."""

from __future__ import annotations


class SpleensegError(Exception):
    """Base class: an input or configuration problem the user can fix. The message names file and problem."""


class InputError(SpleensegError):
    """Bad user input: missing/empty/unreadable folder, non-DICOM file, inconsistent series, bad option."""


class GeometryError(InputError):
    """A volume whose geometry cannot be trusted: gaps, duplicate positions, mixed orientation, gantry tilt."""


class OutputError(SpleensegError, OSError):
    """The output cannot be written (read-only folder, full disk, quota): the message names the file and the
    system's reason. Also an :class:`OSError` (``errno`` kept), so callers that retry on OS errors still do."""


class OrientationWarning(UserWarning):
    """The spleen sits on the patient's right: probably a mirrored header (see :mod:`spleenseg.orientation`).

    Defined here, with no heavy imports, so the command lines can show it once: it is also logged.
    """
