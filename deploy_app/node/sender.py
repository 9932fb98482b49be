"""Send results back to the PACS by C-STORE, one association per study.

Why files are sent as stored (``send_c_store(path)``): the SEG is transmitted byte for byte as the pipeline
wrote and validated it, in its own transfer syntax, with no decode/re-encode in between (except that a later
result for a source series takes the UIDs of the first, see :mod:`deploy_app.node.results`).
"""

from __future__ import annotations

import logging
from pathlib import Path

from pydicom import Dataset, dcmread
from pydicom.misc import is_dicom
from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian
from pynetdicom import AE
from pynetdicom.sop_class import Verification

from deploy_app.node.config import Destination

log = logging.getLogger("deploy_app.node")

#: C-STORE statuses that mean "stored" (success, or stored with a warning such as coercion of elements).
_STORED = {0x0000, 0xB000, 0xB006, 0xB007}


class SendError(RuntimeError):
    """The destination is unreachable or refused an instance; the job stays in the outbox for a retry."""


def is_dicom_file(path: Path) -> bool:
    """True for a DICOM Part 10 file (preamble + ``DICM``); the report JSON and logs are not sent."""
    try:
        return is_dicom(path)
    except OSError:
        return False


def dicom_files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if p.is_file() and is_dicom_file(p))


def read_headers(files: list[Path]) -> dict[Path, Dataset]:
    """The header of each file (no pixel data), read once: the node records the SOP Instance UIDs from them
    before sending, and :func:`send_files` negotiates presentation contexts from them."""
    return {path: dcmread(path, stop_before_pixels=True) for path in files}


def send_files(headers: dict[Path, Dataset], dest: Destination, calling_aet: str,
               timeout: float = 30.0) -> list[Path]:
    """C-STORE the files (keys of ``headers``, see :func:`read_headers`) to ``dest``; return the files stored.
    Raise :class:`SendError` on the first problem.

    Files stored before a failure are returned through the exception's ``sent`` attribute so a retry does
    not send them twice.
    """
    if not headers:  # everything was sent before a restart
        return []
    ae = AE(ae_title=calling_aet)
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = timeout
    for ds in headers.values():
        syntaxes = list(dict.fromkeys([ds.file_meta.TransferSyntaxUID, ExplicitVRLittleEndian, ImplicitVRLittleEndian]))
        ae.add_requested_context(ds.SOPClassUID, syntaxes)
    try:
        assoc = ae.associate(dest.host, dest.port, ae_title=dest.ae_title)
    except OSError as exc:  # e.g. a host name that does not resolve
        raise SendError(f"{dest.ae_title}@{dest.host}:{dest.port} is not reachable ({exc})") from exc
    if not assoc.is_established:
        why = "rejected the association" if assoc.is_rejected else "is not reachable (no association)"
        raise SendError(f"{dest.ae_title}@{dest.host}:{dest.port} {why}")
    sent: list[Path] = []
    try:
        for path in headers:
            try:
                status = assoc.send_c_store(path)
            except (ValueError, RuntimeError) as exc:  # e.g. no accepted presentation context for the SOP class
                status = None
                log.error("sending %s: %s", path.name, exc)
            code = getattr(status, "Status", None)
            if code not in _STORED:
                err = SendError(f"{dest.ae_title}@{dest.host}:{dest.port} did not store {path.name} "
                                f"(SOP Instance {headers[path].SOPInstanceUID}): "
                                + ("no response" if code is None else f"status 0x{code:04X}"))
                err.sent = sent  # type: ignore[attr-defined]
                raise err
            sent.append(path)
    finally:
        assoc.release()
    return sent


def echo(dest: Destination, calling_aet: str, timeout: float = 10.0) -> bool:
    """C-ECHO the destination: used at start-up and by ``--echo`` to check the network set-up."""
    ae = AE(ae_title=calling_aet)
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = timeout
    ae.add_requested_context(Verification)
    try:
        assoc = ae.associate(dest.host, dest.port, ae_title=dest.ae_title)
    except OSError:
        return False
    if not assoc.is_established:
        return False
    try:
        status = assoc.send_c_echo()
        return getattr(status, "Status", None) == 0x0000
    finally:
        assoc.release()
