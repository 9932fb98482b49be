"""Matplotlib set up for files, not screens (Agg backend), and figures saved whole or not at all."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from spleenseg.atomic import atomic_file  # noqa: E402


def save_figure(fig: plt.Figure, out: str | Path, dpi: int = 100) -> Path:
    """Save ``fig`` to ``out`` (format from its suffix) through a temporary file, and close it."""
    try:
        with atomic_file(Path(out)) as tmp:
            fig.savefig(tmp, dpi=dpi)
    finally:
        plt.close(fig)
    return Path(out)
