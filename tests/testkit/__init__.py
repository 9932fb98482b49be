"""Helpers shared by the tests, one module per area: ``bundle`` (run ``python -m monai.bundle``, load the
bundle's scripts), ``deploy`` (run the app, read its SEG), ``dicom`` and ``dicom_checks`` (series and SEG
checks), ``node`` (Orthanc plus a node), ``node_pipeline`` (the node's fast test pipeline, imported by its child
process as ``testkit.node_pipeline:<function>``) and ``constant_model`` (a TorchScript model with a known answer).

``tests/`` is on ``sys.path`` because it holds the top-level ``conftest.py`` (pytest's default import mode), so
tests import ``from testkit.bundle import ...``.
"""
