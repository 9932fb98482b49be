"""Orientation sanity check inside evaluation: the spleen belongs on the patient's left.

A thin MONAI transform over :func:`spleenseg.orientation.check_spleen_left` (the project's one implementation),
so a mirrored header in evaluation data (as in MSD spleen_8) or a mirrored prediction is named in the log instead
of silently lowering the scores. Without the spleenseg library the check is skipped with one warning.
"""

from __future__ import annotations

from typing import Any, Hashable, Mapping, Sequence

import nibabel as nib
import numpy as np
from monai.transforms import MapTransform

from .optional import library_function


class SpleenSideCheckd(MapTransform):
    """Warn (log + ``OrientationWarning``) when a mask's spleen centroid lies on the patient's right.

    Expects channel-first label maps with a RAS ``affine`` (MONAI MetaTensor), e.g. the prediction after
    ``Invertd`` and the untouched reference; ``image_key`` gives the body midline. Data pass through unchanged.
    """

    def __init__(self, keys: Sequence[Hashable], image_key: str | None = "image", spleen_value: int = 1) -> None:
        super().__init__(keys, allow_missing_keys=True)
        self.image_key = image_key
        self.spleen_value = spleen_value

    @staticmethod
    def _nifti(item: Any) -> nib.Nifti1Image:
        array = np.asarray(item.detach().cpu() if hasattr(item, "detach") else item)
        return nib.Nifti1Image(array[0] if array.ndim == 4 else array, np.asarray(item.affine, dtype=float))

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        check_spleen_left = library_function(
            "spleenseg.orientation", "check_spleen_left",
            "spleen left/right check of the masks skipped", "the metrics are computed as usual")
        if check_spleen_left is None:
            return dict(data)
        d = dict(data)
        image = self._nifti(d[self.image_key]) if self.image_key in d else None
        source = str(getattr(d.get(self.image_key), "meta", {}).get("filename_or_obj", "case"))
        for key in self.key_iterator(d):
            check_spleen_left(self._nifti(d[key]), image, self.spleen_value, name=f"{source} [{key}]")
        return d
