"""spleenseg: the shared library behind the spleen CT segmentation project.

Subpackages, one per stage (data flows one way):

- ``spleenseg.phantom``  synthetic abdominal CT phantoms (NIfTI and DICOM writers)
- ``spleenseg.dicom``    DICOM scanning, series grouping, volume building (highdicom), SEG reading
- ``spleenseg.dataset``  MSD-style datasets (imagesTr/labelsTr/dataset.json), download, label alignment
- ``spleenseg.report``   learning curves, overlays, GIFs
- ``spleenseg.orientation`` the "spleen belongs on the patient's left" sanity check

Scripts in ``scripts/`` are thin ``fire`` command lines over these modules; the bundle and the deploy app
import from here instead of copying code.
"""

__version__ = "0.1.0"
