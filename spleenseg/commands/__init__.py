"""Command lines over the library: thin ``fire`` front ends, each with a ``main()`` for its console script.

Each runs as its console script (installed with the package) or as ``python -m spleenseg.commands.<module>``:

* ``spleenseg-prepare`` (:mod:`spleenseg.commands.prepare_data`): DICOM files -> series groups -> NIfTI ->
  MSD-style dataset; labels, MSD download, orientation check, real cases, pseudo-labels.
* ``spleenseg-phantom`` (:mod:`spleenseg.commands.phantom`): synthetic CT phantoms (NIfTI, DICOM studies).
* ``spleenseg-visualize`` (:mod:`spleenseg.commands.visualize`): slice panels, GIFs and learning curves of a model.
* ``spleenseg-validate-model`` (:mod:`spleenseg.commands.validate_model`): leave-one-real-case-out validation.

The benchmarks are plain scripts in the repository's ``benchmarks/`` folder (``python benchmarks/bench_app.py``).
"""
