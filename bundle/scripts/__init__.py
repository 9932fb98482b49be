"""Bundle-local helpers referenced from the configs as ``$scripts.<module>.<name>``.

MONAI puts the bundle root on ``sys.path`` only when ``run`` starts, after ``initialize``; every config
therefore inserts ``@bundle_root`` into ``sys.path`` as its first ``initialize`` step and imports this
package there. Submodules load on first use (``scripts.transforms`` does not import the training code's
pytorch-ignite), so inference runs with only what inference needs installed.
"""

import importlib

__all__ = ["augment", "datalist", "errors", "inference", "metrics", "orientation", "partial_labels", "training",
           "transforms"]


def __getattr__(name: str):
    """``scripts.<module>`` imports that module the first time a config names it."""
    if name in __all__:
        return importlib.import_module(f".{name}", __name__)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
