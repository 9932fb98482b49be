"""The durable on-disk spool: every received instance and every study's state lives in folders under ``work_dir``.

Why folders and renames instead of a database: a rename within one file system is atomic, so after a crash
each study is in exactly one state folder and an administrator can see (and fix) the queue with ``ls``::

    work_dir/incoming/<StudyUID>/<SOPInstanceUID>.dcm   receiving (quiet timer running)
    work_dir/incoming/<StudyUID>/.held                  its association was aborted: held, not processed
    work_dir/incoming/.tmp/                             instances being written (never acknowledged yet)
    work_dir/queued/<job>/input/                        complete, waiting for a worker
    work_dir/running/<job>/{input,output.partial}/      pipeline running
    work_dir/outbox/<job>/{input,output}/               results waiting to be sent
    work_dir/done/<job>/output/                         results sent, or nothing to send (no spleen found);
                                                        input removed unless keep_done_inputs
    work_dir/failed/<job>/{input,error.txt,job.log}     processing or sending failed; kept for a human
    work_dir/sent_uids.txt                              SOP Instance UIDs of every result this node sent

Each job folder holds ``job.json`` (its record) and ``job.log`` (pipeline output and send attempts).
An instance is acknowledged to the sender only after it was written, flushed to disk and renamed into place.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import logging
import os
import re
import shutil
import threading
import time
import uuid
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import IO, Any

from spleenseg.atomic import atomic_file
from spleenseg.errors import InputError

log = logging.getLogger("deploy_app.node")

STATES = ("queued", "running", "outbox", "done", "failed")
#: Marker (JSON: reason, time) in an incoming study folder whose association was aborted; see ``Inbox.hold``.
#: Removing it releases the study: its quiet timer then applies as usual.
HELD_MARKER = ".held"
#: Marker left in a study folder when the sender included a result this node produced (see ``note_own_result``).
OWN_RESULT_MARKER = ".contains_own_result"
_SAFE_UID = re.compile(r"[0-9A-Za-z][0-9A-Za-z._-]{0,63}")


def is_safe_uid(uid: str) -> bool:
    """True when ``uid`` can be used as a file name (DICOM UIDs are digits and dots; refuse path tricks)."""
    return bool(_SAFE_UID.fullmatch(uid)) and ".." not in uid


def is_disk_full(exc: OSError) -> bool:
    """True for "no space left" and "quota exceeded": the spool is fine, it only needs room, so wait and retry."""
    return exc.errno in (errno.ENOSPC, errno.EDQUOT)


class Backoff:
    """Per-key exponential backoff: ``first`` seconds, doubling on each failure, at most ``cap``.

    Why: a step that fails because ``work_dir`` is full fails again on the next tick; retrying it every half
    second floods the log and the disk. Each failure gives one wait (and the caller one log line).
    """

    def __init__(self, first: float, cap: float) -> None:
        self.first, self.cap = first, cap
        self._failures: dict[str, int] = {}
        self._until: dict[str, float] = {}

    def failed(self, key: str) -> float:
        """Record a failure of ``key``; return how long to wait before trying it again."""
        n = self._failures.get(key, 0)
        delay = min(self.first * 2 ** n, self.cap)
        self._failures[key] = n + 1
        self._until[key] = time.monotonic() + delay
        return delay

    def ready(self, key: str) -> bool:
        return self._until.get(key, 0.0) <= time.monotonic()

    def failures(self, key: str) -> int:
        """Failures of ``key`` since its last success."""
        return self._failures.get(key, 0)

    def succeeded(self, key: str) -> None:
        self._failures.pop(key, None)
        self._until.pop(key, None)


def utc_now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


@dataclass
class JobRecord:
    """What is known about one job (one batch of instances of one study). Saved as ``job.json``."""

    job_id: str
    study_uid: str
    instances: int
    calling_aets: list[str]
    received_at: str
    state: str = "queued"
    started_at: str | None = None
    finished_at: str | None = None
    sent_at: str | None = None
    run_seconds: float | None = None
    outputs: list[str] = field(default_factory=list)
    sent: list[str] = field(default_factory=list)
    send_attempts: int = 0
    error: str | None = None
    note: str | None = None
    pipeline_pid: int | None = None
    results: list[dict[str, Any]] = field(default_factory=list)  # per series, from spleen_report.json

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


LOCK_NAME = "node.lock"


def lock_spool(root: Path, owner: str) -> IO[str]:
    """Hold an exclusive lock on ``root/node.lock`` for as long as the returned file stays open.

    Two nodes on one spool would take the same studies and send each result twice, so a second node on a
    locked spool stops at start-up with one line naming the spool and the node that holds it. The kernel
    drops the lock when its process ends, however it ends: a crashed node never leaves a stale lock.
    """
    path = root / LOCK_NAME
    handle = open(path, "a+")
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        handle.seek(0)
        holder = handle.read().strip() or "another process"
        handle.close()
        raise InputError(f"{root}: this spool is in use by {holder}; give each node its own work_dir") from None
    handle.seek(0)
    handle.truncate()
    handle.write(f"{owner} (pid {os.getpid()})\n")
    handle.flush()
    return handle


class Inbox:
    """Receives instances and moves studies through the state folders. Thread-safe."""

    def __init__(self, work_dir: str | Path, retry: Backoff | None = None) -> None:
        self.root = Path(work_dir)
        #: Studies that could not be moved to ``queued/`` wait here before they are tried again.
        self.queue_retry = retry or Backoff(1.0, 300.0)
        self.incoming = self.root / "incoming"
        self.tmp = self.incoming / ".tmp"
        for path in [self.tmp, *(self.root / s for s in STATES)]:
            path.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        self._last_arrival: dict[str, float] = {}
        self._callers: dict[str, set[str]] = {}
        self._sent_registry = self.root / "sent_uids.txt"
        self._own_results: set[str] = set()
        if self._sent_registry.is_file():
            self._own_results = set(self._sent_registry.read_text().split())

    # ---- receiving -------------------------------------------------------------------------------------
    def store(self, study_uid: str, sop_uid: str, data: bytes, calling_aet: str) -> Path:
        """Write one encoded instance durably; only then may the C-STORE be acknowledged.

        The bytes go to a unique temporary file, are flushed to disk, then renamed into the study folder, so
        a crash never leaves a half-written instance where the scheduler could pick it up. A repeated SOP
        Instance UID replaces the earlier copy (a PACS re-sending is not a new image).
        """
        tmp = self.tmp / f"{uuid.uuid4().hex}.part"
        with open(tmp, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        with self._lock:
            study_dir = self.incoming / study_uid
            first = study_uid not in self._last_arrival and not study_dir.exists()
            study_dir.mkdir(exist_ok=True)
            dest = study_dir / f"{sop_uid}.dcm"
            os.replace(tmp, dest)
            _fsync_dir(study_dir)  # the rename itself survives a power cut too
            self._last_arrival[study_uid] = time.monotonic()
            self._callers.setdefault(study_uid, set()).add(calling_aet)
        if first:
            log.info("study %s: receiving from %s", study_uid, calling_aet)
        return dest

    # ---- our own results coming back -------------------------------------------------------------------
    def record_sent(self, sop_uids: list[str]) -> None:
        """Remember results we sent, so that when the PACS sends the study back we recognise it."""
        with self._lock:
            self._own_results.update(sop_uids)
            with open(self._sent_registry, "a") as fh:
                fh.write("".join(f"{uid}\n" for uid in sop_uids))

    def is_own_result(self, sop_uid: str) -> bool:
        return sop_uid in self._own_results

    def note_own_result(self, study_uid: str, calling_aet: str) -> None:
        """The sender included one of our SEGs: the study was processed already (see ``Node._process``).

        Why: a PACS routing rule like "send every new CT study to the AI node" often fires again when our SEG
        arrives, re-sending the whole study (CT + our SEG); processing it again would loop forever.
        """
        with self._lock:
            study_dir = self.incoming / study_uid
            study_dir.mkdir(exist_ok=True)
            (study_dir / OWN_RESULT_MARKER).touch()
            self._last_arrival[study_uid] = time.monotonic()
            self._callers.setdefault(study_uid, set()).add(calling_aet)

    # ---- associations that did not end normally ------------------------------------------------------
    def hold(self, study_uid: str, reason: str) -> None:
        """Hold a study whose association was aborted: it is not queued when its quiet time is over.

        Why: an abort means the sender did not finish; processing what arrived would send the PACS a SEG of part
        of the series, and the re-send a second one. The study waits (``.held`` in its folder, shown in the
        status) until :meth:`completed` (the sender sends it again on an association that ends normally), an
        administrator removes ``.held``, or :meth:`expire_held` parks it in ``failed/``.
        """
        with self._lock:
            study_dir = self.incoming / study_uid
            if not study_dir.is_dir():
                log.warning("study %s: %s, but what arrived was already queued", study_uid, reason)
                return
            record = {"reason": reason, "held_at": utc_now(), "held_since": time.time()}
            with atomic_file(study_dir / HELD_MARKER) as tmp:
                tmp.write_text(json.dumps(record))
        log.warning("study %s: %s; held, not processed, until it is sent again on an association that ends "
                    "normally (or an administrator removes %s)", study_uid, reason, study_dir / HELD_MARKER)

    def completed(self, study_uid: str) -> None:
        """An association that stored instances of this study ended normally: lift its hold, if any; its quiet
        time starts again now."""
        with self._lock:
            marker = self.incoming / study_uid / HELD_MARKER
            if not marker.is_file():
                return
            marker.unlink()
            self._last_arrival[study_uid] = time.monotonic()
        log.info("study %s: received again on an association that ended normally; no longer held", study_uid)

    def held(self) -> dict[str, dict[str, Any]]:
        """Held studies: instance count, reason and since when (UTC)."""
        with self._lock:
            out = {}
            for uid in self._last_arrival:
                record = _held_record(self.incoming / uid)
                if record is not None:
                    out[uid] = {"instances": _count_instances(self.incoming / uid), "reason": record.get("reason"),
                                "held_at": record.get("held_at")}
            return out

    def expire_held(self, hold_seconds: float) -> list[JobRecord]:
        """Park studies held longer than ``hold_seconds`` in ``failed/`` as jobs (moving one to ``queued/``
        processes it as it is). Kept, never dropped: only a human can tell whether the part is enough."""
        parked = []
        with self._lock:
            for study_uid in sorted(self._last_arrival):
                record = _held_record(self.incoming / study_uid)
                if record is None or time.time() - float(record.get("held_since", 0)) < hold_seconds:
                    continue
                error = (f"{record.get('reason')}, and no complete copy arrived within {hold_seconds:g} s "
                         f"(aborted_hold_seconds); move this folder to queued/ to process what arrived")
                try:
                    job = self._new_job(study_uid, state="failed", error=error)
                except OSError as exc:
                    log.error("study %s: held for longer than %g s but cannot be moved to failed/ (%s); still held",
                              study_uid, hold_seconds, exc)
                    continue
                with contextlib.suppress(OSError):  # the reason is in job.json already
                    (self.job_dir(job) / "error.txt").write_text(error + "\n")
                with contextlib.suppress(OSError):  # a job moved to queued/ is never held: the marker only informs
                    os.unlink(self.job_dir(job) / "input" / HELD_MARKER)
                log.error("study %s: %s; kept in %s", study_uid, job.error, self.job_dir(job))
                parked.append(job)
        return parked

    def receiving(self) -> dict[str, int]:
        """Studies still inside their quiet time (not held), with their instance counts so far."""
        with self._lock:
            return {uid: _count_instances(self.incoming / uid) for uid in self._last_arrival
                    if not (self.incoming / uid / HELD_MARKER).exists()}

    def take_quiet_studies(self, quiet_seconds: float) -> list[JobRecord]:
        """Turn every study that got nothing new for ``quiet_seconds`` into a queued job (atomic rename)."""
        jobs = []
        now = time.monotonic()
        with self._lock:
            for study_uid, last in sorted(self._last_arrival.items(), key=lambda kv: kv[1]):
                if now - last < quiet_seconds or not self.queue_retry.ready(study_uid):
                    continue
                if (self.incoming / study_uid / HELD_MARKER).exists():
                    continue
                try:
                    jobs.append(self._new_job(study_uid))
                    self.queue_retry.succeeded(study_uid)
                except OSError as exc:  # one bad study folder must not stop the others from being queued
                    self._not_queued(study_uid, exc)
        return jobs

    def _not_queued(self, study_uid: str, exc: OSError) -> None:
        """A study that could not be moved to ``queued/``: dropped when its folder is gone, else left in
        ``incoming/`` and retried after a growing wait (a full disk must not become a hot loop). Called with the
        lock held."""
        if not (self.incoming / study_uid).is_dir():
            log.error("study %s: its folder incoming/%s disappeared before it was queued (%s); nothing to process",
                      study_uid, study_uid, exc)
            self._last_arrival.pop(study_uid, None)
            self._callers.pop(study_uid, None)
            self.queue_retry.succeeded(study_uid)
            return
        delay = self.queue_retry.failed(study_uid)
        log.error("study %s: cannot be queued (%s); kept in incoming/, retrying in %.1f s", study_uid, exc, delay)

    def _new_job(self, study_uid: str, state: str = "queued", error: str | None = None) -> JobRecord:
        """Move ``incoming/<study>`` to ``queued/<job>/input`` (or ``state``) with its ``job.json``. Called with
        the lock held.

        When the record cannot be written (disk full) the instances go back to ``incoming/<study>``: a job folder
        without its record would be parked as broken, and the study must instead wait for room and be queued.
        """
        job_id = self._unique_job_id(study_uid)
        job_dir = self.root / state / job_id
        job_dir.mkdir()
        try:
            os.rename(self.incoming / study_uid, job_dir / "input")
        except OSError:
            job_dir.rmdir()  # never leave an empty queued/<job> behind
            raise
        callers = sorted(self._callers.get(study_uid, set()) or {"(before restart)"})
        job = JobRecord(job_id, study_uid, _count_instances(job_dir / "input"), callers, utc_now(), state=state,
                        error=error)
        try:
            self.save(job)
        except OSError:
            os.rename(job_dir / "input", self.incoming / study_uid)
            shutil.rmtree(job_dir, ignore_errors=True)
            raise
        self._callers.pop(study_uid, None)
        del self._last_arrival[study_uid]
        if state == "queued" and self._earlier_jobs(study_uid, exclude=job_id):
            log.warning("study %s: received again after an earlier job; processing the new instances as job %s",
                        study_uid, job_id)
        return job

    def _unique_job_id(self, study_uid: str) -> str:
        stamp = time.strftime("%Y%m%dT%H%M%S", time.gmtime())
        job_id, n = f"{stamp}-{study_uid}", 1
        while any((self.root / s / job_id).exists() for s in STATES):
            n += 1
            job_id = f"{stamp}.{n}-{study_uid}"
        return job_id

    def _earlier_jobs(self, study_uid: str, exclude: str) -> list[str]:
        return [p.name for s in STATES for p in (self.root / s).glob(f"*-{study_uid}") if p.name != exclude]

    # ---- restart -----------------------------------------------------------------------------------------
    def recover(self) -> None:
        """Bring the spool back to a consistent state after a stop or crash; nothing received is dropped.

        - unacknowledged temporary files are removed (the sender did not get a success, so it re-sends);
        - studies in ``incoming/`` restart their quiet timer now (the PACS may still be sending);
        - jobs caught in ``running/`` go back to ``queued/`` (their partial output is discarded), or on to
          ``outbox/`` when their output was already complete (so a study is never processed twice).
        """
        for part in self.tmp.iterdir():
            log.warning("removing unacknowledged partial instance %s", part)
            part.unlink()
        now = time.monotonic()
        with self._lock:
            for study_dir in sorted(p for p in self.incoming.iterdir() if p.is_dir() and p != self.tmp):
                if _count_instances(study_dir) == 0 and not (study_dir / OWN_RESULT_MARKER).exists():
                    if any(study_dir.iterdir()):  # only stray files, no instance: keep them for a human
                        self.quarantine(study_dir, "incoming study folder holds no DICOM instance, only other files")
                    else:
                        study_dir.rmdir()
                    continue
                self._last_arrival[study_dir.name] = now
                held = _held_record(study_dir)
                log.info("study %s: resuming, %d instances already received%s", study_dir.name,
                         _count_instances(study_dir), f"; still held: {held.get('reason')}" if held else "")
        for job_dir in sorted((self.root / "running").iterdir()):
            shutil.rmtree(job_dir / "output.partial", ignore_errors=True)
            try:
                job = self.load(job_dir)
            except (OSError, ValueError, TypeError) as exc:
                self.quarantine(job_dir, f"unreadable job.json after a restart ({type(exc).__name__}: {exc})")
                continue
            if (job_dir / "output").is_dir():
                job.state = "outbox"
                self.save(job, job_dir)
                os.rename(job_dir, self.root / "outbox" / job_dir.name)
                log.info("study %s: job %s had finished before the stop; queued for sending", job.study_uid,
                         job.job_id)
                continue
            job.state, job.started_at = "queued", None
            self.save(job, job_dir)
            os.rename(job_dir, self.root / "queued" / job_dir.name)
            log.warning("study %s: job %s was interrupted while running; queued again", job.study_uid, job.job_id)

    def quarantine(self, folder: Path, reason: str) -> Path | None:
        """Move a spool entry the node cannot use to ``failed/`` with ``error.txt``, and go on.

        Why: one damaged folder or record must neither stop the node from starting nor block every later job;
        it is kept (never deleted) for a human, with the reason.
        """
        dst = self.root / "failed" / folder.name
        n = 1
        while dst.exists():
            dst, n = self.root / "failed" / f"{folder.name}.{n}", n + 1
        try:
            os.rename(folder, dst)
            (dst / "error.txt").write_text(reason + "\n")
        except OSError as exc:
            log.error("%s: %s; cannot move it to failed/ (%s)", folder, reason, exc)
            return None
        log.error("%s: %s; moved to %s", folder, reason, dst)
        return dst

    def jobs_in(self, state: str) -> list[str]:
        return sorted(p.name for p in (self.root / state).iterdir() if p.is_dir())

    # ---- job records -------------------------------------------------------------------------------------
    def job_dir(self, job: JobRecord | str, state: str | None = None) -> Path:
        job_id = job if isinstance(job, str) else job.job_id
        return self.root / (state or (job.state if isinstance(job, JobRecord) else "queued")) / job_id

    def move(self, job: JobRecord, state: str) -> Path:
        """Move a job folder to another state folder (atomic) and record the new state."""
        src = self.job_dir(job)
        job.state = state
        dst = self.root / state / job.job_id
        os.rename(src, dst)
        self.save(job, dst)
        return dst

    def save(self, job: JobRecord, job_dir: Path | None = None) -> None:
        job_dir = job_dir or self.job_dir(job)
        if not job_dir.is_dir():  # atomic_file would create it: never make a job folder appear from a record
            raise FileNotFoundError(f"{job_dir}: job folder not found")
        with atomic_file(job_dir / "job.json") as tmp:
            tmp.write_text(json.dumps(job.as_dict(), indent=2))

    @staticmethod
    def load(job_dir: Path) -> JobRecord:
        return JobRecord(**json.loads((job_dir / "job.json").read_text()))

    def append_log(self, job: JobRecord, message: str) -> None:
        with open(self.job_dir(job) / "job.log", "a") as fh:
            fh.write(f"{utc_now()} {message}\n")

    def recent_jobs(self, limit: int = 20) -> list[JobRecord]:
        """The newest jobs over all states, newest first (job ids start with their UTC time)."""
        dirs = [p for s in STATES for p in (self.root / s).iterdir() if (p / "job.json").is_file()]
        dirs.sort(key=lambda p: p.name, reverse=True)
        out = []
        for job_dir in dirs[:limit]:
            try:
                out.append(self.load(job_dir))
            except (OSError, ValueError, TypeError):  # being moved right now; next status update has it
                continue
        return out


def _held_record(study_dir: Path) -> dict[str, Any] | None:
    """The ``.held`` record of a study folder; None when it is not held. An unreadable record still holds."""
    marker = study_dir / HELD_MARKER
    try:
        since = marker.stat().st_mtime
        record = json.loads(marker.read_text())
    except FileNotFoundError:
        return None
    except (OSError, ValueError):
        record = None
    if not isinstance(record, dict):
        record = {"reason": "held (unreadable .held record)"}
    record.setdefault("held_since", since)
    return record


def _fsync_dir(folder: Path) -> None:
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _count_instances(folder: Path) -> int:
    try:
        return sum(1 for p in folder.iterdir() if p.suffix == ".dcm")
    except FileNotFoundError:
        return 0
