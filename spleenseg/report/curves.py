"""Learning curves from the per-epoch metrics the bundle writes (``metrics.json`` / ``metrics.csv``)."""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Any, Sequence

from spleenseg.report.figure import plt, save_figure


def read_metrics(path: str | Path) -> list[dict[str, Any]]:
    """Rows of a bundle metrics file (``.json`` list of dicts or ``.csv`` with a header)."""
    path = Path(path)
    if path.suffix == ".json":
        return json.loads(path.read_text())
    with path.open() as fh:
        return [{k: (float(v) if v not in ("", None) else None) for k, v in r.items()} for r in csv.DictReader(fh)]


def _series(rows: Sequence[dict[str, Any]], key: str) -> tuple[list[int], list[float]]:
    pts = [(int(r["epoch"]), float(r[key])) for r in rows if r.get(key) is not None]
    return [p[0] for p in pts], [p[1] for p in pts]


def best_epoch(rows: Sequence[dict[str, Any]], key_metric: str = "val_mean_dice") -> tuple[int, float] | None:
    """(epoch, value) of the highest validation key metric; the earliest wins a tie, like CheckpointSaver."""
    epochs, values = _series(rows, key_metric)
    if not values:
        return None
    i = max(range(len(values)), key=lambda j: (values[j], -epochs[j]))
    return epochs[i], values[i]


def plot_learning_curves(
    rows: Sequence[dict[str, Any]], out_png: str | Path, key_metric: str = "val_mean_dice"
) -> Path:
    """Two panels: training loss per epoch, validation key metric per epoch with the best epoch marked."""
    out_png = Path(out_png)
    fig, (ax_loss, ax_val) = plt.subplots(1, 2, figsize=(11, 4.2))
    ep, loss = _series(rows, "train_loss")
    ax_loss.plot(ep, loss, "-o", color="#1f77b4", ms=3, label="training loss")
    ax_loss.set(xlabel="epoch", ylabel="loss", title="Training loss")
    ax_loss.grid(alpha=0.3)
    ax_loss.legend()
    ep_v, val = _series(rows, key_metric)
    ax_val.plot(ep_v, val, "-o", color="#2ca02c", ms=3, label=f"validation {key_metric}")
    best = best_epoch(rows, key_metric)
    if best is not None:
        ax_val.axvline(best[0], color="#d62728", ls="--", lw=1)
        ax_val.plot([best[0]], [best[1]], "*", color="#d62728", ms=14, label=f"best: {best[1]:.4f} @ epoch {best[0]}")
    ax_val.set(xlabel="epoch", ylabel=key_metric, title="Validation", ylim=(0, 1.02))
    ax_val.grid(alpha=0.3)
    ax_val.legend(loc="lower right")
    for ax in (ax_loss, ax_val):
        ax.xaxis.get_major_locator().set_params(integer=True)
    fig.tight_layout()
    return save_figure(fig, out_png, dpi=110)
