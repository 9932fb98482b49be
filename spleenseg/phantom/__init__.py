"""Synthetic abdominal CT phantoms with a known spleen, as NIfTI (MSD layout) and DICOM (CT series, SEG).

Typical use::

    from spleenseg.phantom import random_spec, make_phantom, write_nifti, write_dicom_series, write_seg
    ph = make_phantom(random_spec(seed=3, shape=(128, 128, 96)))
    write_nifti(ph, "ct.nii.gz", "spleen.nii.gz")
    paths = write_dicom_series(ph, "dicom/", reverse=True, shuffle_names=True)
    write_seg(ph, paths, "dicom/seg.dcm")

Geometry: anatomy lives in patient coordinates; ``Phantom.affine`` is RAS+ (nibabel) and DICOM headers are LPS.
The spleen is on the patient's left: RAS x < 0, LPS x > 0 (see :mod:`spleenseg.phantom.spec`).
"""

from spleenseg.phantom.anatomy import ORGAN_LABELS, TISSUES, Phantom, grid_affine_lps, grid_affine_ras, make_phantom
from spleenseg.phantom.cohort import FORMATS, cohort_specs, make_cohort
from spleenseg.phantom.dicom import (
    ORIENTATIONS,
    StudyIds,
    label_on_frame,
    phantom_uid,
    stack_geometry,
    write_dicom_series,
    write_dicom_study,
    write_non_ct_series,
    write_scout,
    write_seg,
)
from spleenseg.phantom.nifti import write_nifti
from spleenseg.phantom.spec import PHASES, PhantomSpec, random_spec

__all__ = [
    "FORMATS", "ORGAN_LABELS", "ORIENTATIONS", "PHASES", "TISSUES", "Phantom", "PhantomSpec", "StudyIds",
    "cohort_specs",
    "grid_affine_lps", "grid_affine_ras", "label_on_frame", "make_cohort", "make_phantom", "phantom_uid",
    "random_spec", "stack_geometry", "write_dicom_series", "write_dicom_study", "write_nifti",
    "write_non_ct_series", "write_scout", "write_seg",
]
