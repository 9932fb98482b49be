"""Spleen CT segmentation as a MONAI Deploy application: DICOM CT in, DICOM SEG out.

``deploy_app.run(input_dir, output_dir, model_path, **opts)`` runs the Holoscan application once and returns a
:class:`~deploy_app.runner.RunResult`; ``python -m deploy_app -i DICOM_DIR -o OUT_DIR -m MODEL`` does the same
from a shell (or from ``HOLOSCAN_INPUT_PATH`` / ``HOLOSCAN_OUTPUT_PATH`` / ``HOLOSCAN_MODEL_PATH``).
"""

from deploy_app.runner import RunResult, run

__all__ = ["RunResult", "run"]
