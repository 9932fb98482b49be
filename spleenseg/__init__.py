"""spleenseg: the shared library behind the spleen CT segmentation project.

Subpackages, one per stage (data flows one way):

- ``spleenseg.phantom``  synthetic abdominal CT phantoms (NIfTI and DICOM writers)
- ``spleenseg.dicom``    DICOM scanning, series grouping, volume building (highdicom), SEG reading
- ``spleenseg.dataset``  MSD-style datasets (imagesTr/labelsTr/dataset.json), download, label alignment
- ``spleenseg.report``   learning curves, overlays, GIFs
- ``spleenseg.orientation`` the "spleen belongs on the patient's left" sanity check

The command lines in :mod:`spleenseg.commands` are thin ``fire`` front ends over these modules; the bundle and
the deploy app import from here instead of copying code.
"""

import warnings

__version__ = "0.1.0"

# Holoscan (imported by ``import monai`` whenever the MONAI Deploy SDK is installed) warns about an 8 MB stack
# on every import; that limit only matters to its GPU operators, which this project does not run.
warnings.filterwarnings("ignore", message="Current stack size", category=RuntimeWarning)
