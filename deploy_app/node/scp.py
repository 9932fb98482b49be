"""The DICOM side facing the PACS: a Storage SCP that also answers C-ECHO, built on pynetdicom.

Why accept every transfer syntax: the pipeline decodes compressed CT (JPEG 2000, JPEG lossless, RLE) itself,
and refusing them would make the PACS transcode or, worse, fail the whole send.
"""

from __future__ import annotations

import logging
import threading
from collections import Counter
from typing import Any

from pynetdicom import AE, ALL_TRANSFER_SYNTAXES, AllStoragePresentationContexts, evt
from pynetdicom.sop_class import Verification
from pynetdicom.transport import ThreadedAssociationServer

from deploy_app.node.config import NodeConfig
from deploy_app.node.inbox import Inbox, is_safe_uid

log = logging.getLogger("deploy_app.node")

#: C-STORE failure statuses (PS3.4 Annex B.2.3).
STATUS_OUT_OF_RESOURCES = 0xA700
STATUS_CANNOT_UNDERSTAND = 0xC000


def make_ae(config: NodeConfig) -> AE:
    """An AE that accepts storage of any SOP class in any transfer syntax, plus Verification."""
    ae = AE(ae_title=config.ae_title)
    for context in AllStoragePresentationContexts:
        ae.add_supported_context(context.abstract_syntax, ALL_TRANSFER_SYNTAXES)
    ae.add_supported_context(Verification)
    if not config.accepts_any_caller:
        # pynetdicom rejects the association ("calling AE title not recognised") for anyone else.
        ae.require_calling_aet = list(config.allowed_calling_aets)
    return ae


class AssociationTracker:
    """Which studies each open association stored, and how it ended.

    Why: the quiet timer cannot tell a finished study from one whose sender gave up half way; the association
    can. An abort (A-ABORT, or the connection dropped) holds the studies it stored (:meth:`Inbox.hold`); a normal
    release tells the inbox that the sender finished them (:meth:`Inbox.completed`).
    """

    def __init__(self, inbox: Inbox) -> None:
        self.inbox = inbox
        self._stored: dict[int, Counter[str]] = {}
        self._lock = threading.Lock()

    def stored(self, assoc: Any, study_uid: str) -> None:
        with self._lock:
            self._stored.setdefault(id(assoc), Counter())[study_uid] += 1

    def _take(self, assoc: Any) -> Counter[str]:
        with self._lock:
            return self._stored.pop(id(assoc), Counter())

    def released(self, event: evt.Event) -> None:
        for study_uid in self._take(event.assoc):
            self.inbox.completed(study_uid)

    def aborted(self, event: evt.Event) -> None:
        calling = event.assoc.requestor.ae_title
        for study_uid, n in self._take(event.assoc).items():
            self.inbox.hold(study_uid, f"association from {calling} was aborted after {n} instance(s) of this "
                                       "study")


def start_scp(config: NodeConfig, inbox: Inbox) -> ThreadedAssociationServer:
    """Start listening (non-blocking); every received instance goes through :meth:`Inbox.store`."""
    ae = make_ae(config)
    tracker = AssociationTracker(inbox)
    handlers = [
        (evt.EVT_C_STORE, _handle_store, [inbox, tracker]),
        (evt.EVT_C_ECHO, _handle_echo),
        (evt.EVT_REJECTED, _handle_rejected, [config]),
        (evt.EVT_RELEASED, tracker.released),
        (evt.EVT_ABORTED, tracker.aborted),
    ]
    server = ae.start_server((config.bind_address, config.port), block=False, evt_handlers=handlers)
    log.info("listening as %s on %s:%d; accepting calling AE titles %s", config.ae_title, config.bind_address,
             config.port, "any" if config.accepts_any_caller else config.allowed_calling_aets)
    return server


def _handle_store(event: evt.Event, inbox: Inbox, tracker: AssociationTracker) -> int:
    """Write the instance exactly as received; answer success only once it is safely on disk."""
    calling = event.assoc.requestor.ae_title
    try:
        ds = event.dataset
        study_uid = str(ds.get("StudyInstanceUID", "") or "").strip()
        sop_uid = str(event.request.AffectedSOPInstanceUID or "").strip()
    except Exception as exc:  # undecodable data set: tell the sender, do not crash the association
        log.error("C-STORE from %s: cannot read the data set (%s); refused", calling, exc)
        return STATUS_CANNOT_UNDERSTAND
    if not is_safe_uid(study_uid) or not is_safe_uid(sop_uid):
        log.error("C-STORE from %s: missing or invalid Study Instance UID %r / SOP Instance UID %r; refused",
                  calling, study_uid, sop_uid)
        return STATUS_CANNOT_UNDERSTAND
    if inbox.is_own_result(sop_uid):
        inbox.note_own_result(study_uid, calling)  # acknowledged, not stored: it is our own SEG coming back
        return 0x0000
    try:
        inbox.store(study_uid, sop_uid, event.encoded_dataset(), calling)
    except OSError as exc:
        log.error("C-STORE from %s: cannot write instance %s of study %s: %s", calling, sop_uid, study_uid, exc)
        return STATUS_OUT_OF_RESOURCES
    tracker.stored(event.assoc, study_uid)
    return 0x0000


def _handle_echo(event: evt.Event) -> int:
    log.debug("C-ECHO from %s", event.assoc.requestor.ae_title)
    return 0x0000


def _handle_rejected(event: evt.Event, config: NodeConfig) -> None:
    requestor = event.assoc.requestor
    why = "" if requestor.ae_title in config.allowed_calling_aets else ": calling AE title not in allowed_calling_aets"
    log.warning("association from %s at %s rejected%s", requestor.ae_title, requestor.address, why)
