"""Matplotlib set up for files, not screens (Agg backend), and figures saved whole or not at all."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from spleenseg.atomic import atomic_file  # noqa: E402


def save_figure(fig: plt.Figure, out: str | Path, dpi: int = 100, metadata: dict[str, str] | None = None) -> Path:
    """Save ``fig`` to ``out`` (format from its suffix) through a temporary file, and close it.

    ``metadata`` goes to the file's own text fields (PNG: ``Title``, ``Description``...).
    """
    try:
        with atomic_file(Path(out)) as tmp:
            fig.savefig(tmp, dpi=dpi, metadata=metadata)
    finally:
        plt.close(fig)
    return Path(out)
