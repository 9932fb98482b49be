"""Patient coordinate conventions shared by every module that moves voxels between DICOM, NIfTI and MONAI.

DICOM patient coordinates are LPS (+x = patient's left, +y = posterior, +z = head); NIfTI and MONAI use RAS
(+x = patient's right, +y = anterior). Going between them flips the first two world axes.
"""

from __future__ import annotations

import numpy as np

#: LPS <-> RAS on the world side of a 4x4 affine (its own inverse).
LPS_TO_RAS: np.ndarray = np.diag([-1.0, -1.0, 1.0, 1.0])
