"""A DICOM node around the spleen segmentation app: a PACS sends a study, the node sends the SEG back.

``python -m deploy_app.node --config node.yaml`` runs it. Modules, one concern each:

- :mod:`~deploy_app.node.config`   options (config file + command line), checked at start-up
- :mod:`~deploy_app.node.scp`      Storage SCP + C-ECHO with an allow-list of calling AE titles (pynetdicom)
- :mod:`~deploy_app.node.inbox`    the durable on-disk spool and the state of every study
- :mod:`~deploy_app.node.pipeline` runs ``deploy_app.run`` (or another pipeline) on one study in a child process
- :mod:`~deploy_app.node.sender`   C-STORE of the results to the destination
- :mod:`~deploy_app.node.status`   ``status.json`` and the optional HTTP status endpoint
- :mod:`~deploy_app.node.node`     wires them together
"""

from deploy_app.node.config import Destination, NodeConfig, load_config
from deploy_app.node.node import DicomNode

__all__ = ["Destination", "DicomNode", "NodeConfig", "load_config"]
