"""Pictures from a trained spleen model: slice panels, an animated GIF per case, learning curves.

Examples::

    spleenseg-visualize --dataset_dir data/phantoms --out_dir runs/figures \\
        --ckpt bundle/models/model.pt --split validation --n_cases 2 --metrics runs/train/metrics.json
    # a model trained with other settings: pass the same overrides as for inference
    spleenseg-visualize ... --pixdim "[5.0,5.0,5.0]" --roi_size "[48,48,48]"
    # another bundle folder (a copy, an older release): its configs, scripts and version are used
    spleenseg-visualize ... --bundle /path/to/spleen_bundle
"""

import functools
import inspect

from spleenseg.cli import run_fire
from spleenseg.paths import BUNDLE_DIR
from spleenseg.report.visualize import visualize


#: visualize's own signature with the repository's bundle as the default of ``bundle``; fire reads it for
#: --help and parsing (and passes every argument it parsed positionally, in this order)
SIGNATURE = inspect.signature(visualize).replace(parameters=[
    p.replace(default=str(BUNDLE_DIR)) if p.name == "bundle" else p
    for p in inspect.signature(visualize).parameters.values()])


@functools.wraps(visualize)
def visualize_cli(*args, **kwargs):
    bound = SIGNATURE.bind(*args, **kwargs)
    bound.apply_defaults()
    return visualize(*bound.args, **bound.kwargs)


visualize_cli.__signature__ = SIGNATURE


def main() -> None:
    """Console script ``spleenseg-visualize``."""
    run_fire(visualize_cli, name="spleenseg-visualize")


if __name__ == "__main__":
    main()
