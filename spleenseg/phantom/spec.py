"""What one synthetic CT looks like: acquisition and anatomy parameters, drawn deterministically from a seed.

Everything random about a phantom is decided here, in :func:`random_spec`, so that a :class:`PhantomSpec` fully
describes a case (it is stored beside cohorts as JSON) and :func:`spleenseg.phantom.anatomy.make_phantom` is a pure
function of it.

Coordinates. Anatomy is described in a *body frame* in millimetres that uses the DICOM patient axes (LPS):
+x towards the patient's **left**, +y towards the patient's **back** (posterior), +z towards the **head**. Its
origin is the centre of the abdominal cross-section at the level of the renal hilum. The scanner frame (DICOM
patient coordinates, what ImagePositionPatient holds) is the body frame shifted by ``table_offset_mm``. NIfTI
affines are RAS+ (nibabel): RAS x = -LPS x, RAS y = -LPS y, RAS z = LPS z. So the spleen, on the patient's left,
has LPS x > 0 and RAS x < 0.
"""

from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np

from spleenseg.errors import InputError

PHASES = ("native", "portal")


@dataclass(frozen=True)
class PhantomSpec:
    """Acquisition and anatomy parameters of one phantom (all lengths in mm, angles in degrees).

    Frozen and made of plain numbers/tuples so it can be hashed, compared and written to JSON.
    """

    seed: int
    # --- acquisition -------------------------------------------------------------------------------------------
    shape: tuple[int, int, int]  # voxels along i (columns), j (rows), k (slices)
    spacing: tuple[float, float, float]  # mm between voxel centres along i, j, k
    slice_thickness: float  # reconstructed thickness (may differ from spacing[2])
    phase: str  # "native" or "portal"
    table_offset_mm: tuple[float, float, float]  # body frame origin in scanner (DICOM LPS) coordinates
    fov_centre_mm: tuple[float, float, float]  # scanner LPS position of the grid centre
    tilt_deg: float = 0.0  # oblique acquisition: rotation of the slice plane about the LR axis (0 = axial)
    noise_sd: float = 12.0  # HU, soft-tissue noise after reconstruction
    blur_mm: float = 0.7  # in-plane point spread (Gaussian sigma)
    kvp: float = 120.0
    # --- anatomy (body frame) ----------------------------------------------------------------------------------
    body_half_width: float = 160.0  # lateral half axis of the outer body ellipse
    body_half_depth: float = 115.0  # anterior-posterior half axis
    fat_mm: float = 20.0  # subcutaneous fat thickness
    muscle_mm: float = 10.0  # abdominal wall muscle thickness
    spleen_centre: tuple[float, float, float] = (95.0, 40.0, 55.0)
    spleen_radii: tuple[float, float, float] = (55.0, 35.0, 20.0)  # length, width, thickness semi-axes
    spleen_angles: tuple[float, float, float] = (30.0, 20.0, 0.0)  # pitch, yaw, roll of the long axis
    spleen_lobes: tuple[float, ...] = ()  # lobulation: (amplitude, frequency, phase) triples
    spleen_notch: float = 0.5  # depth of the medial (hilar) concavity, 0..1
    spleen_bend: float = 0.3  # crescent: how far the poles curve medially (fraction of the thickness)
    liver_scale: float = 1.0
    liver_dome_z: float = 150.0
    kidney_z: tuple[float, float] = (-5.0, 10.0)  # right, left kidney centre z
    stomach_fill: float = 0.4  # fraction of the stomach depth that is gas (anterior, non-dependent)
    stomach_scale: float = 1.0
    bowel_seed: int = 0  # seeds the bowel loop layout
    contrast_scale: float = 1.0  # strength of portal-venous enhancement
    spleen_hu_shift: float = 0.0  # individual variation of splenic attenuation
    liver_hu_shift: float = 0.0

    # ------------------------------------------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-able dictionary (tuples become lists)."""
        return json.loads(json.dumps(dataclasses.asdict(self)))

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "PhantomSpec":
        """Inverse of :meth:`to_dict`."""
        kwargs = {f.name: (tuple(data[f.name]) if isinstance(data[f.name], list) else data[f.name])
                  for f in dataclasses.fields(cls) if f.name in data}
        return cls(**kwargs)

    def replace(self, **changes: Any) -> "PhantomSpec":
        """A copy with some fields changed (e.g. a smaller shape for a test)."""
        return dataclasses.replace(self, **changes)


def _check_shape_spacing(shape: Sequence[int] | None, spacing: Sequence[float] | None) -> None:
    if shape is not None:
        if len(shape) != 3 or any(int(n) < 2 for n in shape):
            raise InputError(f"phantom shape must be three voxel counts >= 2, got {shape!r}")
    if spacing is not None:
        if len(spacing) != 3 or any(float(s) <= 0 for s in spacing):
            raise InputError(f"phantom spacing must be three positive mm values, got {spacing!r}")


def _grid(rng: np.random.Generator, shape: Sequence[int] | None, spacing: Sequence[float] | None,
          half_width: float, spleen_semi_length: float) -> tuple[tuple[int, int, int], tuple[float, float, float]]:
    """Grid size and voxel spacing: clinical (512 px, 0.6-1.0 mm, 1-5 mm slices) or fitted to a given shape."""
    u = rng.uniform
    if shape is None:
        sx = float(spacing[0]) if spacing else u(0.6, 1.0)
        sy = float(spacing[1]) if spacing else sx
        sz = float(spacing[2]) if spacing else float(rng.choice([1.0, 1.25, 1.5, 2.0, 2.5, 3.0, 5.0]))
        return (512, 512, max(8, int(round(u(220.0, 320.0) / sz)))), (sx, sy, sz)
    shape_t = (int(shape[0]), int(shape[1]), int(shape[2]))
    if spacing is not None:
        return shape_t, (float(spacing[0]), float(spacing[1]), float(spacing[2]))
    fov = float(np.clip(u(2.1, 2.6) * half_width, 300.0, 480.0))
    sx = fov / max(shape_t[0], shape_t[1])
    coverage = 2 * spleen_semi_length * u(1.6, 2.8)
    # 1-5 mm like a scanner, unless so few slices would then miss most of the spleen
    sz = float(np.clip(coverage / shape_t[2], 1.0, max(5.0, 2.6 * spleen_semi_length / shape_t[2])))
    return shape_t, (sx, sx, sz)


def _spleen(rng: np.random.Generator, inner_w: float, inner_d: float) -> dict[str, Any]:
    """Spleen size, shape and place: a lobulated crescent of 100-430 mL behind the left lower ribs."""
    from spleenseg.phantom.anatomy import spleen_volume_ml  # local import: anatomy imports this module

    u = rng.uniform
    # typical adult spleens are 100-300 mL; the tail up to ~450 mL stands for mild splenomegaly (as in MSD)
    target_ml = float(math.exp(u(math.log(100.0), math.log(430.0))))
    radii = (u(50.0, 64.0), u(30.0, 40.0), u(18.0, 26.0))  # length, width, thickness semi-axes
    pitch, yaw_jitter, roll = u(15.0, 40.0), u(-12.0, 12.0), u(-15.0, 15.0)
    lobes: list[float] = []
    for _ in range(int(rng.integers(2, 6))):
        lobes += [u(0.03, 0.11), float(rng.integers(2, 7)), u(0.0, 2 * math.pi)]
    notch, bend = u(0.2, 0.6), u(0.15, 0.4)
    ml = spleen_volume_ml(radii, tuple(lobes), notch, bend)
    radii = tuple(float(r * (target_ml / ml) ** (1.0 / 3.0)) for r in radii)
    # centre: posterolateral, just inside the left ribcage; its convex surface faces the ribs
    alpha = math.radians(u(15.0, 40.0))  # angle from the lateral direction towards posterior
    depth = radii[2] + u(6.0, 14.0)
    centre = ((inner_w - depth) * math.cos(alpha), (inner_d - depth) * math.sin(alpha),
              u(40.0, 75.0) - 0.15 * (radii[0] - 55.0))
    angles = (pitch, math.degrees(alpha) + yaw_jitter, roll)
    return dict(spleen_centre=centre, spleen_radii=radii, spleen_angles=angles, spleen_lobes=tuple(lobes),
                spleen_notch=notch, spleen_bend=bend)


def random_spec(
    seed: int,
    shape: Sequence[int] | None = None,
    spacing: Sequence[float] | None = None,
    phase: str | None = None,
    *,
    tilt_deg: float | None = None,
    thickness: float | None = None,
) -> PhantomSpec:
    """Draw a plausible abdominal CT (patient and acquisition) from ``seed``.

    Parameters
    ----------
    seed:
        Everything random derives from it: same seed, same spec, same voxels.
    shape, spacing:
        Grid size in voxels and mm. Without either, a clinical-size scan is drawn (512x512, 0.6-1.0 mm pixels,
        1-5 mm slices). With only ``shape``, the in-plane spacing is chosen so the field of view (2.1-2.6x the
        body width, 300-480 mm) covers the abdomen and the slice spacing so the stack covers 1.6-2.8x the
        spleen length (1-5 mm where the slice count allows), which is what small training volumes need.
    phase:
        "native" (no contrast) or "portal" (portal-venous); ``None`` draws one (70 % portal, like MSD).
    tilt_deg:
        Rotation of the slice plane about the left-right axis (oblique acquisition); default 0 (axial).
    thickness:
        Reconstructed slice thickness; default the slice spacing, sometimes thicker (overlapping slices).
    """
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise InputError(f"phantom seed must be a non-negative integer, got {seed!r}")
    _check_shape_spacing(shape, spacing)
    if phase is not None and phase not in PHASES:
        raise InputError(f"unknown contrast phase {phase!r}; choose one of {', '.join(PHASES)}")
    rng = np.random.default_rng([int(seed), 20260529])
    u = rng.uniform

    # --- patient -------------------------------------------------------------------------------------------------
    half_w = u(135.0, 185.0)
    half_d = half_w * u(0.62, 0.78)
    fat = u(8.0, 38.0)
    muscle = u(7.0, 14.0)
    spleen = _spleen(rng, half_w - fat - muscle, half_d - 0.7 * fat - muscle)
    chosen_phase = phase if phase is not None else ("portal" if u() < 0.7 else "native")

    # --- acquisition ---------------------------------------------------------------------------------------------
    shape_t, spacing_t = _grid(rng, shape, spacing, half_w, spleen["spleen_radii"][0])
    if thickness is None:
        thickness = spacing_t[2] * (float(rng.choice([1.0, 1.0, 1.5, 2.0])) if spacing_t[2] < 3.0 else 1.0)
    # table position: the body frame lands somewhere in scanner coordinates (realistic, arbitrary numbers)
    table = (u(-25.0, 25.0), u(-20.0, 40.0), u(-900.0, 200.0))
    # the grid is centred near the iso-centre in-plane, and along z somewhere around the spleen
    fov_z = table[2] + spleen["spleen_centre"][2] + u(-0.25, 0.25) * spacing_t[2] * shape_t[2] * 0.5
    fov_centre = (u(-8.0, 8.0), u(-8.0, 8.0) + table[1] * 0.3, fov_z)

    noise = u(7.0, 22.0) * math.sqrt(2.5 / max(float(thickness), 0.5))
    return PhantomSpec(
        seed=int(seed),
        shape=shape_t,  # type: ignore[arg-type]
        spacing=spacing_t,  # type: ignore[arg-type]
        slice_thickness=float(thickness),
        phase=chosen_phase,
        table_offset_mm=table,
        fov_centre_mm=fov_centre,
        tilt_deg=float(tilt_deg or 0.0),
        noise_sd=float(min(max(noise, 4.0), 35.0)),
        blur_mm=u(0.5, 0.9),
        kvp=float(rng.choice([100.0, 120.0, 120.0, 140.0])),
        body_half_width=half_w,
        body_half_depth=half_d,
        fat_mm=fat,
        muscle_mm=muscle,
        **spleen,
        liver_scale=u(0.88, 1.12),
        liver_dome_z=u(135.0, 170.0),
        kidney_z=(u(-25.0, 5.0), u(-10.0, 20.0)),
        stomach_fill=u(0.15, 0.6),
        stomach_scale=u(0.8, 1.2),
        bowel_seed=int(rng.integers(0, 2**31 - 1)),
        contrast_scale=u(0.75, 1.5),
        spleen_hu_shift=u(-10.0, 8.0),
        liver_hu_shift=u(-10.0, 8.0),
    )


__all__ = ["PHASES", "PhantomSpec", "random_spec"]
