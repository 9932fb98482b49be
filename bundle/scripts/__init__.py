"""Bundle-local helpers referenced from the configs as ``$scripts.<module>.<name>``.

MONAI puts the bundle root on ``sys.path`` only when ``run`` starts, after ``initialize``; every config
therefore inserts ``@bundle_root`` into ``sys.path`` as its first ``initialize`` step and imports this
package there. Keep the modules small and free of heavy imports: they are loaded for every bundle command.
"""

from . import datalist, inference, metrics, orientation, partial_labels, training, transforms  # noqa: F401  (re-exported for `$scripts.x.y`)
