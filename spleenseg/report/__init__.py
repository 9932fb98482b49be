"""Pictures for researchers: learning curves, slice panels with R/L marked, GIFs through the slices.

- :mod:`spleenseg.report.curves`     per-epoch metrics (``metrics.json``/``.csv``) → learning-curve PNG
- :mod:`spleenseg.report.overlay`    CT / reference / prediction panels and animated GIFs (radiological view)
- :mod:`spleenseg.report.visualize`  checkpoint → bundle inference → panels, GIFs, curves
  (CLI: ``spleenseg-visualize``)

- :mod:`spleenseg.report.figure`     Agg backend and write-then-rename saving of figures

Submodules are not imported here so that importing the package does not pull in matplotlib.
"""
