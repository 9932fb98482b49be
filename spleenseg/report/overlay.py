"""Slice panels (image / reference / prediction / overlay) and an animated GIF through the slices.

Display convention (radiological, as on a PACS): axial slices seen from the feet, so the patient's right is on
the viewer's left and anterior is at the top. Volumes are first brought to RAS with nibabel (closest canonical)
so any input orientation (LPS, RAS, flipped) is drawn the same way; R/L/A/P markers are printed on every panel.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import nibabel as nib
import numpy as np
from matplotlib.colors import ListedColormap
from PIL import Image, ImageDraw

from spleenseg.atomic import atomic_file
from spleenseg.measure import dice
from spleenseg.report.figure import plt, save_figure

#: Soft-tissue CT window (level 40 HU, width 400 HU), the usual abdominal reading window.
WINDOW = (-160.0, 240.0)
REF_RGB = (0, 200, 0)  # reference: green
PRED_RGB = (255, 60, 60)  # prediction: red
PRED_CMAP = "spleenseg_prediction"


@dataclass
class RasVolume:
    """A volume in RAS voxel order (see :func:`load_ras`) with its voxel size in mm and affine."""

    data: np.ndarray
    spacing: tuple[float, float, float]
    affine: np.ndarray


def load_ras(path: str | Path) -> RasVolume:
    """Load a NIfTI and reorder its voxels to RAS (axis 0 → patient Right, 1 → Anterior, 2 → Superior)."""
    img = nib.as_closest_canonical(nib.load(str(path)))
    return RasVolume(np.asanyarray(img.dataobj), tuple(float(z) for z in img.header.get_zooms()[:3]), img.affine)


def voxel_ml(affine: np.ndarray) -> float:
    """Volume of one voxel in mL: the affine's determinant, so flipped, permuted or oblique grids all count."""
    return abs(float(np.linalg.det(np.asarray(affine, float)[:3, :3]))) / 1000.0


def case_title(case: str, model: str, prediction: RasVolume, reference: RasVolume | None = None) -> str:
    """``case | model | Dice`` against the reference, or the predicted spleen volume in mL without one.

    Why: a panel or GIF shown on its own (a slide, a chat) must still say which scan, which model and how good
    the mask is; the score is computed from the masks drawn, in 3D over the whole volume.
    """
    pred = prediction.data > 0
    if reference is None:
        score = f"predicted spleen {float(pred.sum()) * voxel_ml(prediction.affine):.1f} mL"
    elif reference.data.shape != prediction.data.shape:
        raise ValueError(f"{case}: reference grid {reference.data.shape} differs from the prediction's "
                         f"{prediction.data.shape}")
    else:
        score = f"Dice {dice(pred, reference.data > 0):.3f}"
    return f"{case} | model {model} | {score}"


def to_display(slice_xy: np.ndarray) -> np.ndarray:
    """RAS axial slice (x, y) → screen rows/cols: anterior at top, patient's right on the viewer's left."""
    # rows: y from anterior (high) to posterior; cols: x from right (high) to left (low)
    return slice_xy.T[::-1, ::-1]


def window(image: np.ndarray, lo_hi: tuple[float, float] = WINDOW) -> np.ndarray:
    """HU → 0..1 grey levels in the given window."""
    lo, hi = lo_hi
    return np.clip((image.astype(np.float32) - lo) / (hi - lo), 0.0, 1.0)


def choose_slices(mask: np.ndarray, n: int = 3) -> list[int]:
    """``n`` axial slices spread over the mask's extent (largest area in the middle); centre slices if empty."""
    area = mask.reshape(-1, mask.shape[2]).sum(0)
    zs = np.flatnonzero(area)
    if zs.size == 0:
        return sorted({int(round(q * (mask.shape[2] - 1))) for q in np.linspace(0.3, 0.7, n)})
    quantiles = np.linspace(0.2, 0.8, n) if n > 1 else [0.5]
    chosen = {int(zs[int(round(q * (zs.size - 1)))]) for q in quantiles}
    chosen.add(int(np.argmax(area)))
    return sorted(chosen)[:n] if len(chosen) > n else sorted(chosen)


def _markers(ax: plt.Axes) -> None:
    kw = dict(transform=ax.transAxes, color="yellow", fontsize=11, fontweight="bold", ha="center", va="center")
    ax.text(0.04, 0.5, "R", **kw)
    ax.text(0.96, 0.5, "L", **kw)
    ax.text(0.5, 0.96, "A", **kw)
    ax.text(0.5, 0.04, "P", **kw)


def panel_figure(
    image: RasVolume, reference: RasVolume | None, prediction: RasVolume, z: int, title: str = ""
) -> plt.Figure:
    """CT, reference mask, predicted mask and an overlay (reference outline green, prediction red) of slice ``z``;
    ``title`` (see :func:`case_title`) heads the figure above the slice's position."""
    sx, sy, sz = image.spacing
    aspect = sy / sx
    grey = to_display(window(image.data[:, :, z]))
    pred = to_display(prediction.data[:, :, z] > 0)
    ref = to_display(reference.data[:, :, z] > 0) if reference is not None else None
    panels = [("CT (W400/L40)", None), ("reference", ref), ("prediction", pred), ("overlay", None)]
    fig, axes = plt.subplots(1, 4, figsize=(16, 4.6))
    for ax, (name, mask) in zip(axes, panels):
        ax.imshow(grey, cmap="gray", vmin=0, vmax=1, aspect=aspect, interpolation="nearest")
        if mask is not None:
            colour = REF_RGB if name == "reference" else PRED_RGB
            ax.imshow(np.ma.masked_where(~mask, mask), cmap=ListedColormap([np.array(colour) / 255]),
                      alpha=0.55, aspect=aspect, interpolation="nearest")
        if name == "overlay":
            ax.imshow(np.ma.masked_where(~pred, pred), cmap=ListedColormap([np.array(PRED_RGB) / 255]),
                      alpha=0.45, aspect=aspect, interpolation="nearest")
            if ref is not None and ref.any():
                ax.contour(ref.astype(float), levels=[0.5], colors=[np.array(REF_RGB) / 255], linewidths=1.5)
        ax.set_title(name)
        ax.set_xlabel("patient right  \u2190  x  \u2192  patient left")
        ax.set_ylabel("posterior  \u2190  y  \u2192  anterior")
        ax.set_xticks([])
        ax.set_yticks([])
        _markers(ax)
    z_mm = float((image.affine @ np.array([0, 0, z, 1]))[2])
    where = f"axial slice {z} (z = {z_mm:.1f} mm)  green = reference, red = prediction"
    fig.suptitle(f"{title}\n{where}" if title else where)
    fig.tight_layout()
    return fig


def slice_panel(
    image: RasVolume, reference: RasVolume | None, prediction: RasVolume, z: int, out_png: str | Path, title: str = ""
) -> Path:
    """One PNG of :func:`panel_figure`; ``title`` is also stored as the PNG's ``Title`` text, for tools and
    tests that read the file rather than its pixels."""
    fig = panel_figure(image, reference, prediction, z, title)
    return save_figure(fig, out_png, metadata={"Title": title} if title else None)


def _banner_lines(text: str, width: int) -> list[str]:
    """``text`` in lines that fit ``width`` pixels in PIL's default font, broken at the `` | `` between parts."""
    draw = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    lines: list[str] = []
    for part in text.split(" | ") if text else []:
        joined = f"{lines[-1]} | {part}" if lines else part
        if lines and draw.textlength(joined) <= width - 8:
            lines[-1] = joined
        else:
            lines.append(part)
    return lines


def _with_banner(frame: Image.Image, lines: list[str]) -> Image.Image:
    """``frame`` below a black band holding ``lines`` (the title must not hide the anatomy)."""
    if not lines:
        return frame
    out = Image.new("RGB", (frame.width, frame.height + 12 * len(lines) + 4))
    out.paste(frame, (0, out.height - frame.height))
    draw = ImageDraw.Draw(out)
    for i, line in enumerate(lines):
        draw.text((4, 2 + 12 * i), line, fill=(255, 255, 255))
    return out


def _prediction_cmap() -> str:
    """A one-colour matplotlib colormap in :data:`PRED_RGB`, registered once, for ``blend_images``."""
    import matplotlib

    if PRED_CMAP not in matplotlib.colormaps:
        matplotlib.colormaps.register(ListedColormap([np.array(PRED_RGB) / 255], name=PRED_CMAP))
    return PRED_CMAP


def _rgb_frame(image: RasVolume, reference: RasVolume | None, prediction: RasVolume, z: int) -> Image.Image:
    from monai.visualize import blend_images

    grey = to_display(window(image.data[:, :, z]))
    pred = to_display(prediction.data[:, :, z] > 0)
    blended = blend_images(grey[None].astype(np.float32), pred[None].astype(np.float32), alpha=0.5,
                           cmap=_prediction_cmap(), rescale_arrays=False)  # half image, half red where predicted
    rgb = np.moveaxis(np.asarray(blended), 0, -1) * 255
    if reference is not None:
        ref = to_display(reference.data[:, :, z] > 0)
        edge = ref & ~(np.roll(ref, 1, 0) & np.roll(ref, -1, 0) & np.roll(ref, 1, 1) & np.roll(ref, -1, 1))
        rgb[edge] = REF_RGB
    frame = Image.fromarray(rgb.astype(np.uint8))
    sx, sy, _ = image.spacing
    scale = max(1, int(round(384 / max(frame.size))))
    frame = frame.resize((frame.width * scale, int(round(frame.height * scale * sy / sx))), Image.NEAREST)
    draw = ImageDraw.Draw(frame)
    w, h = frame.size
    draw.text((4, h // 2), "R", fill=(255, 255, 0))
    draw.text((w - 12, h // 2), "L", fill=(255, 255, 0))
    draw.text((w // 2, 2), "A", fill=(255, 255, 0))
    draw.text((4, 4), f"slice {z}", fill=(255, 255, 255))
    return frame


def slices_gif(
    image: RasVolume, reference: RasVolume | None, prediction: RasVolume, out_gif: str | Path,
    slices: Sequence[int] | None = None, fps: float = 8.0, title: str = "",
) -> Path:
    """Animated GIF from inferior to superior through the slices (prediction red, reference outline green).

    ``title`` (see :func:`case_title`) is drawn above every frame and stored as the GIF's comment.
    """
    out_gif = Path(out_gif)
    zs = list(slices) if slices is not None else list(range(image.data.shape[2]))
    frames = [_rgb_frame(image, reference, prediction, z) for z in zs]
    lines = _banner_lines(title, frames[0].width)
    frames = [_with_banner(f, lines) for f in frames]
    with atomic_file(out_gif) as tmp:
        frames[0].save(tmp, save_all=True, append_images=frames[1:], duration=int(1000 / fps), loop=0,
                       comment=title)
    return out_gif
