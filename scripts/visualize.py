#!/usr/bin/env python
"""Pictures from a trained spleen model: slice panels, an animated GIF per case, learning curves.

Examples::

    python scripts/visualize.py --dataset_dir data/phantoms --out_dir runs/figures \\
        --ckpt bundle/models/model.pt --split validation --n_cases 2 --metrics runs/train/metrics.json
    # a model trained with other settings: pass the same overrides as for inference
    python scripts/visualize.py ... --pixdim "[5.0,5.0,5.0]" --roi_size "[48,48,48]"
"""

from spleenseg.cli import run_fire
from spleenseg.report.visualize import visualize

if __name__ == "__main__":
    run_fire(visualize)
