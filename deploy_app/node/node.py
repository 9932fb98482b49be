"""The DICOM node: receive studies, run the pipeline on each complete study, send the results back.

Threads, each with one job: the pynetdicom server (receiving), a ticker (quiet-time detection and status),
``workers`` worker threads (each drives one pipeline child process) and a sender (C-STORE with backoff).
Every state that matters lives in the on-disk spool (:mod:`deploy_app.node.inbox`), so a restart after any
crash sees the same state the threads saw.
"""

from __future__ import annotations

import logging
import os
import queue
import shutil
import signal
import threading
import time
from typing import Any

from deploy_app.node.config import DEFAULT_PIPELINE, NodeConfig
from deploy_app.node.inbox import (OWN_RESULT_MARKER, Backoff, Inbox, JobRecord, is_disk_full, lock_spool,
                                   utc_now)
from deploy_app.node.pipeline import Pipeline, PipelineError, PipelineRunner
from deploy_app.node.results import REGISTRY_NAME, ResultRegistry
from deploy_app.node.scp import start_scp
from deploy_app.node.sender import SendError, dicom_files, echo, read_headers, send_files
from deploy_app.node.status import StatusServer, build_status, describe_results, report_results, write_status
from deploy_app.runner import EXIT_NO_RESULT
from spleenseg.errors import InputError, SpleensegError

log = logging.getLogger("deploy_app.node")
TICK_SECONDS = 0.5


class DicomNode:
    """Owns the spool, the SCP and the worker threads. ``pipeline`` overrides ``config.pipeline``."""

    def __init__(self, config: NodeConfig, pipeline: Pipeline | None = None) -> None:
        self.config = config
        self.inbox = Inbox(config.work_dir, self._disk_backoff())
        self.results = ResultRegistry(self.inbox.root / REGISTRY_NAME)
        #: Jobs that a full (or unwritable) ``work_dir`` kept from being processed or parked wait here.
        self._job_retry = self._disk_backoff()
        self.runner = PipelineRunner(pipeline or config.pipeline, config.model_path, config.pipeline_options,
                                     config.job_timeout_seconds)
        self.status_path = self.inbox.root / "status.json"
        self._jobs: queue.Queue[str | None] = queue.Queue()
        self._enqueued: set[str] = set()
        self._stop = threading.Event()
        self._shutdown_requested = threading.Event()
        self._wake_sender = threading.Event()
        self._next_send: dict[str, float] = {}
        self._dest_state: dict[str, Any] = {"last_ok_at": None, "last_error": None}
        self._threads: list[threading.Thread] = []
        self._server: Any = None
        self._http: StatusServer | None = None
        self._started_at = utc_now()
        self._status_lock = threading.Lock()
        self._last_status: dict[str, Any] | None = None
        self._status_error: str | None = None
        self._spool_lock: Any = None

    def _disk_backoff(self) -> Backoff:
        return Backoff(self.config.disk_retry_seconds, self.config.disk_retry_max_seconds)

    # ---- life cycle --------------------------------------------------------------------------------------
    def start(self) -> None:
        """Lock the spool, check the model, recover the spool, then start receiving, processing and sending."""
        self._spool_lock = lock_spool(self.inbox.root, f"node {self.config.ae_title} on port {self.config.port}")
        try:
            self._start_serving()
        except BaseException:
            self._release_spool()
            raise

    def _start_serving(self) -> None:
        """Everything after the lock; any failure here releases it again (see :meth:`start`)."""
        self._check_model()
        self.inbox.recover()
        self._enqueue_new_jobs()
        try:
            self._server = start_scp(self.config, self.inbox)
        except OSError as exc:
            raise InputError(f"cannot listen for DICOM on {self.config.bind_address}:{self.config.port} "
                             f"({exc.strerror or exc})") from exc
        self._spawn(self._ticker, "ticker")
        for i in range(self.config.workers):
            self._spawn(self._worker, f"worker-{i}")
        self._spawn(self._sender, "sender")
        if self.config.status_port is not None:
            try:
                self._http = StatusServer(self.config.status_bind_address, self.config.status_port, self.status)
            except OSError as exc:
                self.stop()
                raise InputError(f"cannot serve the status on {self.config.status_bind_address}:"
                                 f"{self.config.status_port} ({exc.strerror or exc})") from exc
        self.write_status()

    def _check_model(self) -> None:
        """Fail at start-up, not on every study, when the app's model path is not a usable bundle."""
        if self.config.model_path and self.runner.pipeline == DEFAULT_PIPELINE:
            from deploy_app.bundle_info import read_model_metadata, resolve_model_path  # light: no torch

            read_model_metadata(resolve_model_path(self.config.model_path))

    def stop(self) -> None:
        """Stop accepting, stop running pipelines (their studies are re-run on the next start), join threads."""
        if self._stop.is_set():
            return
        log.info("stopping")
        self._stop.set()
        if self._server is not None:
            self._server.shutdown()
        self.runner.terminate_all()
        for _ in range(self.config.workers):
            self._jobs.put(None)
        self._wake_sender.set()
        for thread in self._threads:
            thread.join(30)
        if self._http is not None:
            self._http.close()
        self.write_status()
        self._release_spool()
        log.info("stopped")

    def _release_spool(self) -> None:
        if self._spool_lock is not None:
            self._spool_lock.close()  # closing the file drops the lock
            self._spool_lock = None

    def serve_forever(self) -> None:
        """Run until SIGTERM or SIGINT (Ctrl-C), then stop cleanly."""
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, lambda *_: self._shutdown_requested.set())
        self.start()
        try:
            while not self._shutdown_requested.wait(1.0):
                pass
        finally:
            self.stop()

    def _spawn(self, target: Any, name: str) -> None:
        thread = threading.Thread(target=self._guard, args=(target,), name=name, daemon=True)
        thread.start()
        self._threads.append(thread)

    def _guard(self, target: Any) -> None:
        """A bug in one loop must be loud but must not silently stop the node from serving."""
        while not self._stop.is_set():
            try:
                target()
                return
            except Exception:  # noqa: BLE001
                log.exception("internal error in %s; restarting it in 5 s", threading.current_thread().name)
                self._stop.wait(5)

    # ---- status ------------------------------------------------------------------------------------------
    def status(self) -> dict[str, Any]:
        dest = self.config.destination
        destination = {"configured": dest is not None, **self._dest_state}
        if dest is not None:
            destination.update(ae_title=dest.ae_title, host=dest.host, port=dest.port)
        node = {"ae_title": self.config.ae_title, "port": self.config.port, "pid": os.getpid(),
                "started_at": self._started_at, "work_dir": str(self.inbox.root),
                "status_url": None}
        if self._http is not None:
            node["status_url"] = f"http://{self.config.status_bind_address}:{self._http.port}/status"
        return build_status(self.inbox, node, destination)

    def write_status(self) -> None:
        """Write ``status.json`` when its content changed (``updated_at`` aside, which is then the time of the
        change). Locked: start()/stop() and the ticker call this from different threads."""
        with self._status_lock:
            status = self.status()
            content = {k: v for k, v in status.items() if k != "updated_at"}
            if content == self._last_status:
                return
            try:
                write_status(self.status_path, status)
            except (OSError, SpleensegError) as exc:
                if str(exc) != self._status_error:  # once per problem, not on every tick while the disk is full
                    log.warning("cannot write %s: %s; trying again on every change", self.status_path, exc)
                    self._status_error = str(exc)
                return
            if self._status_error is not None:
                log.info("%s written again", self.status_path)
                self._status_error = None
            self._last_status = content

    # ---- ticker: quiet studies become jobs ---------------------------------------------------------------
    def _ticker(self) -> None:
        while not self._stop.wait(TICK_SECONDS):
            for job in self.inbox.take_quiet_studies(self.config.quiet_seconds):
                log.info("study %s: received %d instance(s) from %s; queued as job %s", job.study_uid,
                         job.instances, ", ".join(job.calling_aets), job.job_id)
            if self.config.aborted_hold_seconds:
                self.inbox.expire_held(self.config.aborted_hold_seconds)
            self._enqueue_new_jobs()
            self.write_status()

    def _enqueue_new_jobs(self) -> None:
        """Queue every job folder in ``queued/`` not queued yet (also ones an operator moved back by hand), except
        jobs waiting out a retry delay after the spool could not be written."""
        for job_id in self.inbox.jobs_in("queued"):
            if job_id not in self._enqueued and self._job_retry.ready(job_id):
                self._enqueued.add(job_id)
                self._jobs.put(job_id)

    # ---- workers: one pipeline run per job ---------------------------------------------------------------
    def _worker(self) -> None:
        while True:
            job_id = self._jobs.get()
            if job_id is None or self._stop.is_set():
                return
            try:
                self._process(job_id)
                self._job_retry.succeeded(job_id)
            except OSError as exc:
                if is_disk_full(exc):
                    self._retry_later(job_id, f"work_dir is full ({exc})")
                else:
                    self._internal_error(job_id, exc)
            except Exception as exc:  # noqa: BLE001 - a bug or a disk problem must not wedge the queue
                self._internal_error(job_id, exc)
            finally:
                self._enqueued.discard(job_id)

    def _internal_error(self, job_id: str, exc: Exception) -> None:
        """A bug or an unexpected spool problem: park the job in ``failed/``; when even that fails, wait and retry
        (one line per attempt, the traceback on the first)."""
        reason = f"internal error: {type(exc).__name__}: {exc}"
        problem = self._park_broken_job(job_id, reason, exc)
        if problem is not None:
            self._retry_later(job_id, f"{reason}; cannot move it to failed/ ({problem})", exc)

    def _retry_later(self, job_id: str, reason: str, exc: Exception | None = None) -> None:
        """Put a job the spool had no room for back in ``queued/`` (as it was) and wait before trying it again.

        Why not ``failed/``: nothing is wrong with the study, and parking it needs room too; retried on every
        tick, it would give two ERROR lines each half second for as long as the disk stays full.
        """
        running = self.inbox.job_dir(job_id, "running")
        if running.is_dir():
            shutil.rmtree(running / "output.partial", ignore_errors=True)  # the run is redone; frees its room
            try:
                os.rename(running, self.inbox.job_dir(job_id, "queued"))
            except OSError as exc:
                log.error("job %s: %s; cannot move it back to queued/ (%s); it runs again at the next start",
                          job_id, reason, exc)
                return
        if not self.inbox.job_dir(job_id, "queued").is_dir():  # it got further (outbox/, done/): carries on there
            log.error("job %s: %s; left where it is", job_id, reason)
            return
        first = self._job_retry.failures(job_id) == 0
        delay = self._job_retry.failed(job_id)
        log.error("job %s: not processed, %s; kept in queued/, retrying in %.1f s", job_id, reason, delay,
                  exc_info=exc if first else None)

    def _process(self, job_id: str) -> None:
        job = self.inbox.load(self.inbox.job_dir(job_id, "queued"))
        job.state = "queued"
        if (self.inbox.job_dir(job) / "input" / OWN_RESULT_MARKER).exists():
            self._skip_processed(job)
            return
        # A job an operator moved back from failed/ holds what its last run left: its partial output, or (when
        # sending failed) its complete output and send record. Cleared while still in queued/, so a crash here
        # never lets recover() send old results. (error.txt is cleared by the runner.)
        for stale in ("output.partial", "output"):
            shutil.rmtree(self.inbox.job_dir(job) / stale, ignore_errors=True)
        job_dir = self.inbox.move(job, "running")
        partial = job_dir / "output.partial"
        partial.mkdir()
        job.started_at, job.error = utc_now(), None
        job.sent, job.send_attempts, job.results = [], 0, []
        self.inbox.save(job)
        self.inbox.append_log(job, f"started on {job.instances} instance(s)")
        log.info("study %s: started (job %s, %d instances)", job.study_uid, job_id, job.instances)
        t0 = time.monotonic()
        try:
            produced = self.runner.run(job_dir / "input", partial, job_dir / "job.log",
                                       on_start=lambda pid: self._started(job, pid))
            if produced and not dicom_files(partial):
                raise PipelineError("the pipeline finished without writing any DICOM file to its output folder")
        except PipelineError as exc:
            if self._stop.is_set():  # interrupted by stop(): left in running/, re-queued on the next start
                return
            self._fail(job, f"processing failed: {exc}", time.monotonic() - t0)
            return
        os.rename(partial, job_dir / "output")
        job.run_seconds = round(time.monotonic() - t0, 2)
        job.finished_at = utc_now()
        job.outputs = sorted(str(p.relative_to(job_dir / "output")) for p in (job_dir / "output").rglob("*")
                             if p.is_file())
        job.results = report_results(job_dir / "output")
        results = describe_results(job.results)
        self.inbox.append_log(job, f"finished in {job.run_seconds} s: {job.outputs}; {results}")
        if not produced:
            self._done_without_result(job, results)
            return
        # Logged before the move (also "sent" and "failed"): a job seen in its next folder has its log line.
        log.info("study %s: finished in %.1f s (job %s): %d DICOM file(s) to send; %s", job.study_uid,
                 job.run_seconds, job_id, len(dicom_files(job_dir / "output")), results)
        self.inbox.move(job, "outbox")
        self._wake_sender.set()

    def _done_without_result(self, job: JobRecord, results: str) -> None:
        """The pipeline finished and found nothing to send (no spleen): done, not failed, so never retried; the
        report stays in ``done/<job>/output``."""
        job.note = f"done, nothing to send (pipeline exit status {EXIT_NO_RESULT}: no SEG produced)"
        self.inbox.append_log(job, job.note)
        log.warning("study %s: finished in %.1f s (job %s), nothing to send: %s", job.study_uid, job.run_seconds,
                    job.job_id, results)
        self._move_to_done(job)

    def _park_broken_job(self, job_id: str, reason: str, exc: Exception | None = None) -> str | None:
        """Move a job that broke the worker to ``failed/`` as it is, so it is neither lost nor retried forever.

        Returns None when done (or when the job is gone), else why it stayed where it is (e.g. no room for
        ``error.txt``); the caller then retries it later.
        """
        for state in ("queued", "running"):
            src = self.inbox.job_dir(job_id, state)
            if src.is_dir():
                try:
                    (src / "error.txt").write_text(reason + "\n")
                    os.rename(src, self.inbox.job_dir(job_id, "failed"))
                except OSError as err:
                    return str(err)
                log.error("job %s: %s; kept in failed/", job_id, reason, exc_info=exc)
                return None
        return None

    def _started(self, job: JobRecord, pid: int) -> None:
        job.pipeline_pid = pid
        self.inbox.save(job)

    def _skip_processed(self, job: JobRecord) -> None:
        """A study that came back with our own SEG in it was processed already: keep it, do not run again."""
        job.note = "skipped: the study contains a result this node produced, so it was processed already"
        job.finished_at = utc_now()
        self.inbox.append_log(job, job.note)
        self._move_to_done(job)
        log.info("study %s: %s (job %s, %d instance(s))", job.study_uid, job.note, job.job_id, job.instances)

    def _move_to_done(self, job: JobRecord) -> None:
        """Remove the received instances (unless ``keep_done_inputs``), *then* move the job to ``done/``, so a job
        that shows up in ``done/`` is finished; removing them afterwards let observers see a half-cleaned job."""
        if not self.config.keep_done_inputs:
            shutil.rmtree(self.inbox.job_dir(job) / "input", ignore_errors=True)
        self.inbox.move(job, "done")

    def _fail(self, job: JobRecord, reason: str, seconds: float | None = None) -> None:
        """Keep everything of a failed job in ``failed/`` with the reason; never delete it."""
        job.error = reason
        job.finished_at = utc_now()
        if seconds is not None:
            job.run_seconds = round(seconds, 2)
        job_dir = self.inbox.job_dir(job)
        (job_dir / "error.txt").write_text(reason + "\n")
        self.inbox.append_log(job, f"FAILED: {reason}")
        first_line = reason.splitlines()[0] if reason else "?"
        log.error("study %s: failed (job %s): %s; kept in %s (see job.log there)", job.study_uid, job.job_id,
                  first_line, self.inbox.job_dir(job.job_id, "failed"))
        self.inbox.move(job, "failed")

    # ---- sender: C-STORE with backoff --------------------------------------------------------------------
    def _sender(self) -> None:
        dest = self.config.destination
        if dest is not None:
            ok = echo(dest, self.config.ae_title)
            (log.info if ok else log.warning)("destination %s@%s:%d %s", dest.ae_title, dest.host, dest.port,
                                              "answers C-ECHO" if ok else "does not answer C-ECHO (will retry sends)")
        while not self._stop.is_set():
            for job_id in self.inbox.jobs_in("outbox"):
                if self._stop.is_set():
                    return
                if self._next_send.get(job_id, 0.0) <= time.monotonic():
                    self._send(job_id)
            self._wake_sender.wait(TICK_SECONDS)
            self._wake_sender.clear()

    def _send(self, job_id: str) -> None:
        job_dir = self.inbox.job_dir(job_id, "outbox")
        try:
            job = self.inbox.load(job_dir)
        except (OSError, ValueError, TypeError) as exc:  # one damaged record must not block every later send
            self.inbox.quarantine(job_dir, f"unreadable job.json in outbox/ ({type(exc).__name__}: {exc})")
            return
        if job.state == "failed":  # an operator moved it back from failed/ to retry: give it fresh attempts
            job.send_attempts = 0
            self._next_send.pop(job_id, None)
        job.state = "outbox"
        job_dir = self.inbox.job_dir(job)
        dest = self.config.destination
        if dest is None:
            job.sent_at = utc_now()
            self.inbox.move(job, "done")
            log.info("study %s: no destination configured; results kept in %s", job.study_uid,
                     self.inbox.job_dir(job) / "output")
            return
        files = [p for p in dicom_files(job_dir / "output") if p.name not in job.sent]
        job.send_attempts += 1
        try:
            for r in self.results.adopt(files, job_id):
                note = (f"{r.file.name} replaces the SEG of series {r.source_series_uid} sent by job "
                        f"{r.earlier_job_id} (same Series and SOP Instance UID)")
                self.inbox.append_log(job, note)
                log.info("study %s: %s", job.study_uid, note)
            headers = read_headers(files)
            # Recorded *before* sending: a PACS may forward our SEG back before send_files returns. A UID recorded
            # for a send that then fails is harmless (the same result is sent again on the retry).
            self.inbox.record_sent([str(ds.SOPInstanceUID) for ds in headers.values()])
            sent = send_files(headers, dest, self.config.ae_title)
        except SendError as exc:
            job.sent += [p.name for p in getattr(exc, "sent", [])]
            self._send_failed(job, str(exc))
            return
        except Exception as exc:  # noqa: BLE001 - e.g. an unreadable result file: count it, never loop
            self._send_failed(job, f"{type(exc).__name__}: {exc}")
            return
        job.sent += [p.name for p in sent]
        job.sent_at, job.error = utc_now(), None
        self._dest_state.update(last_ok_at=job.sent_at, last_error=None)
        self._next_send.pop(job_id, None)
        self.inbox.append_log(job, f"sent {len(sent)} file(s) to {dest.ae_title}@{dest.host}:{dest.port}")
        log.info("study %s: sent %d file(s) to %s@%s:%d (job %s)", job.study_uid, len(sent), dest.ae_title,
                 dest.host, dest.port, job_id)
        self._move_to_done(job)

    def _send_failed(self, job: JobRecord, reason: str) -> None:
        cfg = self.config
        self._dest_state["last_error"] = reason
        if cfg.send_max_attempts and job.send_attempts >= cfg.send_max_attempts:
            self._next_send.pop(job.job_id, None)
            self._fail(job, f"sending failed {job.send_attempts} times, giving up: {reason}")
            return
        delay = min(cfg.send_backoff_seconds * 2 ** (job.send_attempts - 1), cfg.send_backoff_max_seconds)
        self._next_send[job.job_id] = time.monotonic() + delay
        job.error = f"send attempt {job.send_attempts} failed: {reason}"
        self.inbox.save(job)
        self.inbox.append_log(job, f"{job.error}; retry in {delay:.0f} s")
        log.warning("study %s: send attempt %d failed: %s; retrying in %.1f s", job.study_uid, job.send_attempts,
                    reason, delay)
