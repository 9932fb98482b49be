"""Turn a :class:`~spleenseg.phantom.spec.PhantomSpec` into voxels: analytic anatomy in mm, sampled on the grid.

Why analytic: every organ is an implicit shape (ellipse, ellipsoid, capsule, lobulated crescent) in the body
frame (LPS mm, see :mod:`spleenseg.phantom.spec`). Sampling it at the voxel centres of any grid (any spacing,
offset or obliquity) gives the image and a label that agree exactly, and the geometry can be tested in world
coordinates instead of trusting array indices. Each shape is only evaluated inside its bounding box, with
broadcast coordinate arrays, which keeps a 160^3 phantom at about a second.

Painting order matters: later tissues overwrite earlier ones; the spleen is painted last inside the abdominal
cavity, so ``label == 1`` is exactly where spleen attenuation was painted.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import numpy as np
from scipy import ndimage

from spleenseg.coords import LPS_TO_RAS
from spleenseg.phantom.spec import PhantomSpec

#: (native HU, portal-venous HU, texture SD) per tissue; portal values scale with ``spec.contrast_scale``.
#: Numbers follow typical clinical values and what the real CT in shared/data shows (native TotalSegmentator
#: example: spleen 35, liver 47, aorta 42 HU, noise SD ~12; portal MSD spleen_8: spleen ~160; fat about -100).
TISSUES: dict[str, tuple[float, float, float]] = {
    "air": (-1000.0, -1000.0, 0.0),
    "lung": (-860.0, -860.0, 25.0),
    "skin": (25.0, 35.0, 6.0),
    "fat": (-102.0, -100.0, 10.0),
    "visceral_fat": (-95.0, -92.0, 12.0),
    "muscle": (50.0, 62.0, 6.0),
    "liver": (54.0, 108.0, 5.0),
    "spleen": (42.0, 118.0, 7.0),
    "kidney_cortex": (32.0, 165.0, 6.0),
    "kidney_medulla": (30.0, 125.0, 6.0),
    "renal_sinus": (-60.0, -50.0, 15.0),
    "perirenal_fat": (-95.0, -92.0, 12.0),
    "aorta": (42.0, 165.0, 4.0),
    "ivc": (40.0, 130.0, 4.0),
    "portal_vein": (42.0, 170.0, 4.0),
    "pancreas": (42.0, 95.0, 8.0),
    "stomach_wall": (40.0, 95.0, 5.0),
    "gastric_fluid": (10.0, 14.0, 4.0),
    "gas": (-990.0, -990.0, 8.0),
    "gastric_gas": (-990.0, -990.0, 8.0),
    "mesenteric_vessel": (42.0, 150.0, 5.0),
    "bowel_wall": (40.0, 100.0, 6.0),
    "bowel_fluid": (12.0, 18.0, 6.0),
    "feces": (-80.0, -80.0, 90.0),
    "gallbladder": (8.0, 10.0, 3.0),
    "csf": (10.0, 12.0, 3.0),
    "disc": (85.0, 90.0, 8.0),
    "bone_cancellous": (230.0, 235.0, 40.0),
    "bone_cortical": (750.0, 750.0, 90.0),
    "rib": (420.0, 420.0, 90.0),
    "heart": (40.0, 120.0, 8.0),
    "table": (120.0, 120.0, 10.0),
    "table_foam": (-420.0, -420.0, 20.0),
}
#: The organ label scheme of multi-organ training labels (the bundle's output channels, in this order).
ORGAN_LABELS: dict[str, int] = {"background": 0, "spleen": 1, "liver": 2, "kidney": 3, "stomach": 4}
#: Which painted tissues make up each non-spleen organ label (the spleen comes from ``Phantom.label``).
ORGAN_TISSUES: dict[int, tuple[str, ...]] = {
    ORGAN_LABELS["liver"]: ("liver",),
    ORGAN_LABELS["kidney"]: ("kidney_cortex", "kidney_medulla", "renal_sinus"),
    ORGAN_LABELS["stomach"]: ("stomach_wall", "gastric_fluid", "gastric_gas"),
}
#: Index of each tissue in :attr:`Phantom.tissue` (0 = air).
TISSUE_INDEX: dict[str, int] = {name: i for i, name in enumerate(TISSUES)}


@dataclass(repr=False)
class Phantom:
    """A synthetic CT: ``image`` (int16 HU) and ``label`` (uint8, 1 = spleen) on the grid ``affine`` (RAS+).

    Arrays are indexed (i, j, k) = (column, row, slice) of the equivalent DICOM series, i.e. the nibabel
    convention: world_ras = affine @ (i, j, k, 1).
    """

    image: np.ndarray
    label: np.ndarray
    affine: np.ndarray
    spec: PhantomSpec
    #: uint8 map of which tissue was painted where (see :data:`TISSUE_INDEX`); for realism checks and
    #: multi-organ experiments. It is the noiseless truth, the image is what a scanner would show.
    tissue: np.ndarray | None = None

    def __repr__(self) -> str:  # arrays would flood test reports
        return (f"Phantom(seed={self.spec.seed}, shape={self.image.shape}, spacing="
                f"{tuple(round(s, 3) for s in self.spacing)}, phase={self.spec.phase!r}, "
                f"spleen={self.spleen_ml:.0f} mL)")

    def tissue_mask(self, *names: str) -> np.ndarray:
        """Boolean mask of the voxels painted with any of ``names`` (e.g. ``"liver"``)."""
        if self.tissue is None:
            raise ValueError("this phantom carries no tissue map")
        return np.isin(self.tissue, [TISSUE_INDEX[n] for n in names])

    @property
    def affine_lps(self) -> np.ndarray:
        """Voxel to DICOM patient (LPS) coordinates."""
        return LPS_TO_RAS @ self.affine

    @property
    def spacing(self) -> tuple[float, float, float]:
        return tuple(float(s) for s in np.linalg.norm(self.affine[:3, :3], axis=0))  # type: ignore[return-value]

    @property
    def spleen_ml(self) -> float:
        """Spleen volume in millilitres, from the label."""
        return float(self.label.astype(bool).sum() * abs(np.linalg.det(self.affine[:3, :3])) / 1000.0)

    def organ_labels(self) -> np.ndarray:
        """uint8 map in the project's organ scheme (:data:`ORGAN_LABELS`: 1 spleen, 2 liver, 3 kidney, 4 stomach).

        Why: a network that only ever sees "spleen or not" has no reason to tell the spleen from the liver,
        which look alike in HU; the phantom knows every organ by construction, so it can teach both.
        """
        organs = np.zeros(self.label.shape, np.uint8)
        for value, tissues in ORGAN_TISSUES.items():
            organs[self.tissue_mask(*tissues)] = value
        organs[self.label > 0] = ORGAN_LABELS["spleen"]
        return organs

    def spleen_centroid_ras(self) -> np.ndarray:
        """Spleen centre of mass in world RAS mm (x < 0 means the patient's left)."""
        ijk = np.argwhere(self.label > 0).mean(axis=0)
        return self.affine[:3, :3] @ ijk + self.affine[:3, 3]


# ---------------------------------------------------------------------------------------------------------------
# geometry helpers
# ---------------------------------------------------------------------------------------------------------------


def _rot_x(deg: float) -> np.ndarray:
    c, s = math.cos(math.radians(deg)), math.sin(math.radians(deg))
    return np.array([[1.0, 0, 0], [0, c, -s], [0, s, c]])


def _rot_y(deg: float) -> np.ndarray:
    c, s = math.cos(math.radians(deg)), math.sin(math.radians(deg))
    return np.array([[c, 0, s], [0, 1.0, 0], [-s, 0, c]])


def _rot_z(deg: float) -> np.ndarray:
    c, s = math.cos(math.radians(deg)), math.sin(math.radians(deg))
    return np.array([[c, -s, 0], [s, c, 0], [0, 0, 1.0]])


def grid_affine_lps(spec: PhantomSpec) -> np.ndarray:
    """Voxel (i, j, k) -> scanner LPS mm. Columns: +i to the patient's left, +j posterior, +k superior (tilted
    about the LR axis by ``spec.tilt_deg`` for an oblique acquisition)."""
    directions = _rot_x(spec.tilt_deg)
    aff = np.eye(4)
    aff[:3, :3] = directions * np.asarray(spec.spacing)[None, :]
    centre_index = (np.asarray(spec.shape, dtype=float) - 1.0) / 2.0
    aff[:3, 3] = np.asarray(spec.fov_centre_mm) - aff[:3, :3] @ centre_index
    return aff


def grid_affine_ras(spec: PhantomSpec) -> np.ndarray:
    """Voxel -> RAS+ mm (the NIfTI affine)."""
    return LPS_TO_RAS @ grid_affine_lps(spec)


class _Grid:
    """Body-frame coordinates of voxel centres, produced lazily per bounding box as broadcastable arrays."""

    def __init__(self, spec: PhantomSpec) -> None:
        self.shape = spec.shape
        aff = grid_affine_lps(spec)
        aff[:3, 3] -= np.asarray(spec.table_offset_mm)  # scanner -> body frame
        self.aff = aff
        self.inv = np.linalg.inv(aff)

    def box(self, lo: tuple[float, float, float], hi: tuple[float, float, float]) -> tuple[slice, ...] | None:
        """Index slices covering the body-frame box [lo, hi] (None when it misses the grid)."""
        corners = np.array(np.meshgrid(*zip(lo, hi), indexing="ij")).reshape(3, -1)
        ijk = self.inv[:3, :3] @ corners + self.inv[:3, 3:4]
        start = np.maximum(np.floor(ijk.min(axis=1)).astype(int), 0)
        stop = np.minimum(np.ceil(ijk.max(axis=1)).astype(int) + 1, self.shape)
        if np.any(stop <= start):
            return None
        return tuple(slice(int(a), int(b)) for a, b in zip(start, stop))

    def coords(self, sl: tuple[slice, ...]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """X, Y, Z (body frame mm) of the voxels in ``sl``, broadcastable, float32; unused axes stay length 1."""
        idx = [np.arange(s.start, s.stop, dtype=np.float32) for s in sl]
        idx = [idx[0][:, None, None], idx[1][None, :, None], idx[2][None, None, :]]
        out = []
        for row in range(3):
            val: np.ndarray = np.float32(self.aff[row, 3]) + np.zeros((1, 1, 1), np.float32)
            for col in range(3):
                if abs(self.aff[row, col]) > 1e-9:
                    val = val + np.float32(self.aff[row, col]) * idx[col]
            out.append(val)
        return out[0], out[1], out[2]


class _Canvas:
    """The image being painted: HU and texture SD per voxel, plus helpers that paint one shape."""

    def __init__(self, spec: PhantomSpec) -> None:
        self.spec = spec
        self.grid = _Grid(spec)
        self.hu = np.full(spec.shape, TISSUES["air"][0], np.float32)
        self.sd = np.zeros(spec.shape, np.float32)
        self.tissue = np.zeros(spec.shape, np.uint8)

    def value(self, tissue: str) -> tuple[float, float]:
        native, portal, sd = TISSUES[tissue]
        hu = native if self.spec.phase == "native" else native + (portal - native) * self.spec.contrast_scale
        if tissue == "spleen":
            hu += self.spec.spleen_hu_shift
        if tissue == "liver":
            hu += self.spec.liver_hu_shift
        return hu, sd

    def mask(self, lo, hi, inside: Callable, where: np.ndarray | None = None) -> np.ndarray | None:
        """Full-size mask of ``inside(X, Y, Z)`` evaluated only within the body-frame box [lo, hi] (None when the
        box misses the grid); ``where`` (full-size bool) restricts it, e.g. to the abdominal cavity."""
        sl = self.grid.box(lo, hi)
        if sl is None:
            return None
        sub = np.broadcast_to(inside(*self.grid.coords(sl)), tuple(s.stop - s.start for s in sl))
        if where is not None:
            sub = sub & where[sl]
        full = np.zeros(self.spec.shape, bool)
        full[sl] = sub
        return full

    def fill(self, tissue: str, mask: np.ndarray) -> None:
        """Paint ``tissue`` (attenuation, texture SD, tissue index) where ``mask`` is true."""
        hu, sd = self.value(tissue)
        self.hu[mask] = hu
        self.sd[mask] = sd
        self.tissue[mask] = TISSUE_INDEX[tissue]

    def paint(self, tissue: str, lo, hi, inside: Callable, where: np.ndarray | None = None) -> np.ndarray | None:
        """Paint ``tissue`` where ``inside(X, Y, Z)`` is true within the box [lo, hi]; returns the mask painted."""
        full = self.mask(lo, hi, inside, where)
        if full is not None:
            self.fill(tissue, full)
        return full


def _ellipse(cx: float, cy: float, a: float, b: float, p: float = 2.0) -> Callable:
    """2-D (super)ellipse in x/y, extruded along z."""
    return lambda X, Y, Z: (np.abs((X - cx) / a) ** p + np.abs((Y - cy) / b) ** p) <= 1.0


def _ellipsoid(c, radii, rot: np.ndarray | None = None) -> Callable:
    def inside(X, Y, Z):
        d = (X - c[0], Y - c[1], Z - c[2])
        if rot is not None:  # local = rot^T d
            d = tuple(rot[0, i] * d[0] + rot[1, i] * d[1] + rot[2, i] * d[2] for i in range(3))
        return (d[0] / radii[0]) ** 2 + (d[1] / radii[1]) ** 2 + (d[2] / radii[2]) ** 2 <= 1.0

    return inside


def _capsule_dist2(X, Y, Z, a, b) -> np.ndarray:
    """Squared distance from points to the segment a-b."""
    a = np.asarray(a, np.float32)
    ab = np.asarray(b, np.float32) - a
    t = ((X - a[0]) * ab[0] + (Y - a[1]) * ab[1] + (Z - a[2]) * ab[2]) / float(ab @ ab)
    t = np.clip(t, 0.0, 1.0)
    return (X - a[0] - t * ab[0]) ** 2 + (Y - a[1] - t * ab[1]) ** 2 + (Z - a[2] - t * ab[2]) ** 2


def _tube(points: list[tuple[float, float, float]], radius: float) -> tuple[Callable, tuple, tuple]:
    """A tube (union of capsules) along a polyline; returns (inside, lo, hi)."""
    pts = np.asarray(points, float)

    def inside(X, Y, Z):
        d2 = None
        for a, b in zip(pts[:-1], pts[1:]):
            cur = _capsule_dist2(X, Y, Z, a, b)
            d2 = cur if d2 is None else np.minimum(d2, cur)
        return d2 <= radius**2

    return inside, tuple(pts.min(0) - radius), tuple(pts.max(0) + radius)


# ---------------------------------------------------------------------------------------------------------------
# the spleen
# ---------------------------------------------------------------------------------------------------------------


def spleen_rotation(angles: tuple[float, float, float]) -> np.ndarray:
    """Local spleen axes (length, width, thickness) -> body frame.

    Base: length along +z (superior), width towards anterior (-y), thickness towards the patient's left (+x).
    Then roll about the long axis, pitch (upper pole tips posteriorly) and yaw (thickness axis turns to face the
    posterolateral ribs, so the convex diaphragmatic surface lies against them).
    """
    pitch, yaw, roll = angles
    base = np.array([[0.0, 0.0, 1.0], [0.0, -1.0, 0.0], [1.0, 0.0, 0.0]]).T  # columns: local axes in body
    c, s = math.cos(math.radians(roll)), math.sin(math.radians(roll))
    roll_m = np.array([[1.0, 0, 0], [0, c, -s], [0, s, c]])  # about local length axis
    return _rot_z(yaw) @ _rot_x(pitch) @ base @ roll_m


def _spleen_local(u0, u1, u2, radii, lobes, notch, bend) -> np.ndarray:
    """Inside test in the spleen's own frame: a crescent (poles bent medially), lobulated, with a hilar notch."""
    a, b, c = radii
    q0, q1 = u0 / a, u1 / b
    q2 = u2 / c + bend * q0**2  # poles curve towards the medial side (-u2)
    r = np.sqrt(q0**2 + q1**2 + q2**2)
    f = 1.0
    if lobes:
        theta = np.arctan2(q2, q1)
        rim = 1.0 - np.minimum(q0**2, 1.0)
        lob = 0.0
        for amp, freq, ph in zip(lobes[0::3], lobes[1::3], lobes[2::3]):
            lob = lob + amp * np.cos(freq * theta + ph + 1.7 * q0)
        f = 1.0 + lob * (0.4 + 0.6 * rim)
    inside = r <= f
    # hilum: a medial concavity where the vessels enter
    hil = (q0 / 0.55) ** 2 + (q1 / 0.5) ** 2 + ((q2 + 1.55 - 0.6 * notch) / 0.85) ** 2 <= 1.0
    return inside & ~hil


def spleen_volume_ml(radii, lobes, notch, bend, step: float = 1.5) -> float:
    """Volume of the spleen shape (before clipping by neighbours), by counting points of a fine local grid."""
    axes = [np.arange(-1.6 * r, 1.6 * r + step, step, dtype=np.float32) for r in radii]
    u0, u1, u2 = axes[0][:, None, None], axes[1][None, :, None], axes[2][None, None, :]
    return float(_spleen_local(u0, u1, u2, radii, lobes, notch, bend).sum() * step**3 / 1000.0)


def _spleen_inside(spec: PhantomSpec) -> tuple[Callable, tuple, tuple]:
    rot = spleen_rotation(spec.spleen_angles)
    c = spec.spleen_centre
    ext = 1.6 * max(spec.spleen_radii)

    def inside(X, Y, Z):
        d = (X - c[0], Y - c[1], Z - c[2])
        u = [rot[0, i] * d[0] + rot[1, i] * d[1] + rot[2, i] * d[2] for i in range(3)]
        return _spleen_local(u[0], u[1], u[2], spec.spleen_radii, spec.spleen_lobes, spec.spleen_notch,
                             spec.spleen_bend)

    return inside, tuple(np.subtract(c, ext)), tuple(np.add(c, ext))


# ---------------------------------------------------------------------------------------------------------------
# the abdomen
# ---------------------------------------------------------------------------------------------------------------


class _Body:
    """Derived sizes of one patient's abdomen."""

    def __init__(self, spec: PhantomSpec) -> None:
        self.w, self.d = spec.body_half_width, spec.body_half_depth
        self.wi = self.w - spec.fat_mm - spec.muscle_mm  # abdominal cavity half axes
        self.di = self.d - 0.7 * spec.fat_mm - spec.muscle_mm
        self.yv = 0.42 * self.di  # vertebral body centre (posterior)
        self.zlo, self.zhi = -600.0, 600.0
        self.dome = spec.liver_dome_z

    def diaphragm_z(self, X, Y) -> np.ndarray:
        """Height of the diaphragm: two domes (right higher), reaching lower posteriorly (costophrenic recess)."""
        side = np.where(X < 0, 0.0, -12.0)
        lateral = 55.0 * ((np.abs(X) / self.wi - 0.45) ** 2)
        post = 70.0 * np.clip(Y / self.di, 0.0, 1.0) ** 2
        return self.dome + side - lateral - post


def _paint_body_wall(cv: _Canvas, body: _Body) -> tuple[np.ndarray, np.ndarray]:
    """Table, skin, subcutaneous fat, muscle wall; returns (inside body, inside cavity) masks."""
    spec = cv.spec
    lo, hi = (-1e4, -1e4, body.zlo), (1e4, 1e4, body.zhi)
    table_y = body.d + 4.0
    cv.paint("table_foam", lo, hi, lambda X, Y, Z: (Y > body.d * 0.95) & (Y < table_y) & (np.abs(X) < body.w * 1.2))
    cv.paint("table", lo, hi, lambda X, Y, Z: (Y >= table_y) & (Y < table_y + 7.0) & (np.abs(X) < body.w * 1.4))
    p = 2.3  # slightly boxy like a supine abdomen
    inside_body = cv.paint("skin", lo, hi, _ellipse(0, 0, body.w, body.d, p))
    cv.paint("fat", lo, hi, _ellipse(0, 0, body.w - 2.5, body.d - 2.5, p))
    f = spec.fat_mm
    cv.paint("muscle", lo, hi, _ellipse(0, 0.15 * f, body.w - f, body.d - 0.85 * f, p))
    cavity = cv.paint("visceral_fat", lo, hi, _ellipse(0, 0.15 * f, body.wi, body.di, p))
    assert inside_body is not None and cavity is not None
    return inside_body, cavity


def _paint_thorax(cv: _Canvas, body: _Body, cavity: np.ndarray) -> None:
    """Lung bases above the diaphragm, and the heart resting on it."""
    lo, hi = (-body.wi, -body.di, body.dome - 130), (body.wi, body.di, body.zhi)
    above = lambda X, Y, Z: Z > body.diaphragm_z(X, Y)  # noqa: E731
    cv.paint("lung", lo, hi, above, where=cavity)
    # the heart rests on the diaphragm, left of the midline and anterior
    heart = _ellipsoid((0.12 * body.wi, -0.25 * body.di, body.dome + 45), (0.42 * body.wi, 0.5 * body.di, 65),
                       _rot_z(-30))
    cv.paint("heart", lo, hi, lambda X, Y, Z: above(X, Y, Z) & heart(X, Y, Z), where=cavity)


def _paint_spine_and_ribs(cv: _Canvas, body: _Body) -> None:
    """Vertebrae with discs and canal, paraspinal muscles, psoas, and ribs in the wall above the costal margin."""
    yv = body.yv
    lo, hi = (-body.w, yv - 60, body.zlo), (body.w, body.d, body.zhi)
    cv.paint("muscle", lo, hi, lambda X, Y, Z: ((np.abs(X) - 38) / 30) ** 2 + ((Y - yv - 48) / 26) ** 2 <= 1.0)
    # psoas: from the L1 level (z ~ 30) downwards, growing thicker caudally
    cv.paint("muscle", lo, hi, lambda X, Y, Z: (((np.abs(X) - 38) / (7 + 0.13 * np.clip(30 - Z, 0, 150))) ** 2
             + ((Y - yv + 2) / (6 + 0.09 * np.clip(30 - Z, 0, 150))) ** 2 <= 1.0) & (Z < 30))
    level = 33.0  # vertebral height incl. disc
    disc = lambda Z: np.abs(((Z + 7.0) % level) - level / 2) < 4.0  # noqa: E731
    vb = _ellipse(0, yv, 21, 17)
    cv.paint("bone_cortical", lo, hi, vb)
    cv.paint("bone_cancellous", lo, hi, _ellipse(0, yv, 18.5, 14.5))
    cv.paint("disc", lo, hi, lambda X, Y, Z: vb(X, Y, Z) & disc(Z))
    cv.paint("bone_cortical", lo, hi, lambda X, Y, Z: (((X / 24) ** 2 + ((Y - yv - 36) / 10) ** 2 <= 1.0)
                                                    | ((X / 5) ** 2 + ((Y - yv - 54) / 14) ** 2 <= 1.0)) & ~disc(Z))
    cv.paint("csf", lo, hi, _ellipse(0, yv + 29, 9, 8))
    # ribs: bands in the muscle wall, sloping down anteriorly, absent over the anterior abdomen
    f, m = cv.spec.fat_mm, cv.spec.muscle_mm

    def ribs(X, Y, Z):
        ang = np.arctan2(Y - 0.15 * f, X)  # +pi/2 = posterior, -pi/2 = anterior
        sin_a = np.sin(ang)
        rho = np.sqrt((X / (body.wi + 0.6 * m)) ** 2 + ((Y - 0.15 * f) / (body.di + 0.6 * m)) ** 2)
        zr = Z + 45.0 * (1.0 - sin_a)  # anterior part of each rib is lower
        band = np.abs(((zr + 5.0) % 26.0) - 13.0) < 4.5
        top = body.dome + 40.0
        reach = (zr < top) & (zr > 40.0) & (sin_a > -0.55 - 0.45 * ((zr - 40.0) / (top - 40.0)))
        return band & reach & (np.abs(rho - 1.0) < 0.04)

    cv.paint("rib", (-body.w, -body.d, -100), (body.w, body.d, body.zhi), ribs)


def _paint_organs(cv: _Canvas, body: _Body, cavity: np.ndarray, rng: np.random.Generator) -> None:
    """Liver, gallbladder, kidneys, stomach, bowel, pancreas and vessels, inside the abdominal cavity."""
    spec, wi, di, yv = cv.spec, body.wi, body.di, body.yv
    below = lambda X, Y, Z: Z <= body.diaphragm_z(X, Y)  # noqa: E731
    # liver: right upper quadrant, left lobe crossing the midline anteriorly
    ls = spec.liver_scale
    lc = (-0.32 * wi, -0.08 * di, body.dome - 85 * ls)
    lr = (0.72 * wi * ls, 0.86 * di, 92 * ls)
    ell = _ellipsoid(lc, lr)
    cv.paint("liver", np.subtract(lc, lr), np.add(lc, lr),
             lambda X, Y, Z: ell(X, Y, Z) & below(X, Y, Z) & (X < 0.1 * wi - 0.6 * (Y + 0.1 * di)), where=cavity)
    gb = (-0.3 * wi, -0.45 * di, lc[2] - 55)
    cv.paint("gallbladder", np.subtract(gb, 35), np.add(gb, 35),
             _ellipsoid(gb, (14, 16, 30), _rot_x(25)), where=cavity)
    # hepatic portal branches (bright in portal phase)
    porta = (-0.25 * wi, yv - 0.35 * di, lc[2] - 20)
    for tip in [(-0.75 * wi, 0.0, lc[2] + 10), (-0.45 * wi, -0.5 * di, lc[2] + 25), (-0.1 * wi, -0.55 * di, lc[2])]:
        inside, lo, hi = _tube([porta, tip], 4.5)
        cv.paint("portal_vein", lo, hi, inside, where=cavity)
    # kidneys: cortex, medulla, sinus fat; upper poles tilted medially and posteriorly
    for side, kz in ((-1.0, spec.kidney_z[0]), (1.0, spec.kidney_z[1])):
        kc = (side * (0.22 * wi + 30), yv + 8, kz)
        rot = _rot_z(side * 30) @ _rot_x(-15) @ _rot_y(side * 12)
        lo, hi = np.subtract(kc, 70), np.add(kc, 70)
        cv.paint("perirenal_fat", lo, hi, _ellipsoid(kc, (33, 29, 62), rot), where=cavity)
        cv.paint("kidney_cortex", lo, hi, _ellipsoid(kc, (24, 20, 52), rot), where=cavity)
        cv.paint("kidney_medulla", lo, hi, _ellipsoid(kc, (17, 13, 42), rot), where=cavity)
        sc = (kc[0] - side * 12, kc[1] - 6, kc[2])
        cv.paint("renal_sinus", lo, hi, _ellipsoid(sc, (10, 8, 22), rot), where=cavity)
    _paint_stomach(cv, body, cavity)
    _paint_bowel(cv, body, cavity, rng)
    # pancreas from the splenic hilum across the aorta to the duodenal sweep, splenic vein behind it
    sc = np.asarray(spec.spleen_centre)
    tail = (sc[0] - 0.9 * spec.spleen_radii[2] - 18, sc[1] - 20, sc[2] - 25)
    path = [tail, (25, yv - 48, 25), (-5, yv - 52, 15), (-35, yv - 40, 5)]
    inside, lo, hi = _tube(path, 11.0)
    cv.paint("pancreas", lo, hi, inside, where=cavity)
    inside, lo, hi = _tube([(tail[0], tail[1] + 12, tail[2] + 4), (25, yv - 34, 27), (-10, yv - 40, 18)], 4.5)
    cv.paint("portal_vein", lo, hi, inside, where=cavity)
    inside, lo, hi = _tube([(-10, yv - 40, 15), porta], 7.0)
    cv.paint("portal_vein", lo, hi, inside, where=cavity)
    # aorta (left of midline, in front of the spine) and IVC (right, running into the liver)
    lo, hi = (-60, yv - 60, body.zlo), (60, yv, body.zhi)
    cv.paint("aorta", lo, hi, _ellipse(14, yv - 31, 12, 12), where=cavity)
    cv.paint("ivc", lo, hi, lambda X, Y, Z: ((X + 24) / 14) ** 2 + ((Y - yv + 30) / 10) ** 2 <= 1.0, where=cavity)


def _paint_stomach(cv: _Canvas, body: _Body, cavity: np.ndarray) -> None:
    """Stomach anterior-medial to the spleen: wall, gastric fluid, and gas above an air-fluid level."""
    spec, wi, di = cv.spec, body.wi, body.di
    s = spec.stomach_scale
    c = (0.3 * wi, -0.22 * di, spec.spleen_centre[2] + 10)
    r = (42 * s, 36 * s, 55 * s)
    rot = _rot_z(-25) @ _rot_x(-20)
    lo, hi = np.subtract(c, 70 * s), np.add(c, 70 * s)
    cv.paint("stomach_wall", lo, hi, _ellipsoid(c, r, rot), where=cavity)
    inner = _ellipsoid(c, (r[0] - 4, r[1] - 4, r[2] - 4), rot)
    cv.paint("gastric_fluid", lo, hi, inner, where=cavity)
    level = c[1] - r[1] + 2 * r[1] * spec.stomach_fill  # supine: gas rises anteriorly (smaller LPS y)
    cv.paint("gastric_gas", lo, hi, lambda X, Y, Z: inner(X, Y, Z) & (Y < level), where=cavity)


def _paint_bowel(cv: _Canvas, body: _Body, cavity: np.ndarray, rng: np.random.Generator) -> None:
    """Colon frame (ascending, transverse, descending to the splenic flexure) and small-bowel loops."""
    wi, di = body.wi, body.di
    sz = cv.spec.spleen_centre[2]
    flex = (0.72 * wi, -0.05 * di, sz - 45)  # splenic flexure sits just below/anterior to the spleen
    colon = [(-0.7 * wi, 0.05 * di, -160), (-0.7 * wi, -0.1 * di, -20), (-0.45 * wi, -0.6 * di, -5),
             (0.35 * wi, -0.62 * di, 0), flex, (0.72 * wi, 0.05 * di, -160)]
    for a, b in zip(colon[:-1], colon[1:]):
        r = rng.uniform(17, 24)
        inside, lo, hi = _tube([a, b], r)
        cv.paint("bowel_wall", lo, hi, inside, where=cavity)
        inside_c, _, _ = _tube([a, b], r - 3)
        content = "gas" if rng.uniform() < 0.6 else "feces"
        cv.paint(content, lo, hi, inside_c, where=cavity)
    for _ in range(int(rng.integers(10, 20))):
        start = (rng.uniform(-0.55, 0.55) * wi, rng.uniform(-0.8, 0.1) * di, rng.uniform(-170, 0))
        pts = [start]
        for _ in range(3):
            p = pts[-1]
            pts.append((p[0] + rng.uniform(-40, 40), p[1] + rng.uniform(-20, 20), p[2] + rng.uniform(-30, 30)))
        r = rng.uniform(9, 14)
        inside, lo, hi = _tube(pts, r)
        cv.paint("bowel_wall", lo, hi, inside, where=cavity)
        inside_c, _, _ = _tube(pts, r - 2.5)
        cv.paint("gas" if rng.uniform() < 0.25 else "bowel_fluid", lo, hi, inside_c, where=cavity)
    # mesenteric vessels fanning out from the root of the mesentery (small bright dots in portal phase)
    root = (5.0, body.yv - 45.0, -10.0)
    free = cavity & _painted(cv, "visceral_fat")
    for _ in range(int(rng.integers(8, 16))):
        tip = (rng.uniform(-0.6, 0.6) * wi, rng.uniform(-0.7, 0.0) * di, rng.uniform(-170, -20))
        inside, lo, hi = _tube([root, tip], float(rng.uniform(1.5, 3.0)))
        cv.paint("mesenteric_vessel", lo, hi, inside, where=free)


def _painted(cv: _Canvas, *names: str) -> np.ndarray:
    """Voxels currently painted with one of ``names``."""
    return np.isin(cv.tissue, [TISSUE_INDEX[n] for n in names])


def _finish(cv: _Canvas, rng: np.random.Generator) -> np.ndarray:
    """Tissue texture, scanner blur (in-plane PSF, slice profile) and correlated noise; int16 HU."""
    spec = cv.spec
    sp = np.asarray(spec.spacing)
    shape = spec.shape
    tex = rng.standard_normal(shape, dtype=np.float32)
    ndimage.gaussian_filter(tex, sigma=np.maximum(2.0 / sp, 0.6), output=tex, truncate=2.5)
    tex *= 1.0 / max(float(tex.std()), 1e-6)
    hu = cv.hu + cv.sd * tex
    del tex
    sigma = np.array([spec.blur_mm / sp[0], spec.blur_mm / sp[1], spec.slice_thickness / 2.355 / sp[2]])
    sigma = np.maximum(sigma, 0.35)  # partial volume at coarse spacing
    ndimage.gaussian_filter(hu, sigma=sigma, output=hu, truncate=3.0)
    noise = rng.standard_normal(shape, dtype=np.float32)
    ndimage.gaussian_filter(noise, sigma=(0.7, 0.7, 0.3), output=noise, truncate=2.5)
    hu += noise * (spec.noise_sd / max(float(noise.std()), 1e-6))
    del noise
    np.clip(hu, -1024, 3071, out=hu)
    return np.rint(hu).astype(np.int16)


def _paint_spleen(cv: _Canvas, body: _Body, cavity: np.ndarray) -> np.ndarray:
    """Paint the spleen last; it displaces soft neighbours (stomach, colon, pancreas, fat) but yields to the
    kidney with its perirenal fat, vessels, muscle and bone. Returns the label (uint8, 1 = spleen)."""
    inside, lo, hi = _spleen_inside(cv.spec)
    firm = _painted(cv, "perirenal_fat", "kidney_cortex", "kidney_medulla", "renal_sinus", "aorta", "ivc",
                    "muscle", "bone_cortical", "bone_cancellous", "disc", "rib", "csf")
    spleen = cv.mask(lo, hi, lambda X, Y, Z: inside(X, Y, Z) & (Z <= body.diaphragm_z(X, Y) + 8.0),
                     where=cavity & ~firm)
    if spleen is None or not spleen.any():
        return np.zeros(cv.spec.shape, np.uint8)
    parts, n = ndimage.label(spleen)
    if n > 1:  # neighbours can cut off specks; a spleen is one organ (splenules are not modelled)
        spleen = parts == (np.argmax(np.bincount(parts.ravel())[1:]) + 1)
    cv.fill("spleen", spleen)
    return spleen.astype(np.uint8)


def make_phantom(spec: PhantomSpec) -> Phantom:
    """Build the phantom voxels for ``spec`` (deterministic: the same spec always gives the same arrays)."""
    cv = _Canvas(spec)
    body = _Body(spec)
    rng = np.random.default_rng([spec.seed, spec.bowel_seed, 7])
    _, cavity = _paint_body_wall(cv, body)
    _paint_thorax(cv, body, cavity)
    _paint_spine_and_ribs(cv, body)
    _paint_organs(cv, body, cavity, rng)
    label = _paint_spleen(cv, body, cavity)
    image = _finish(cv, np.random.default_rng([spec.seed, 11]))
    return Phantom(image=image, label=label, affine=grid_affine_ras(spec), spec=spec, tissue=cv.tissue)
