"""Health and status: a JSON file rewritten on every change, and optionally the same JSON over HTTP.

Why both: the file needs no open port and is what a monitoring agent or a test reads; the endpoint
(``GET /status``, ``GET /health``) is what a load balancer or a human with curl expects.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, Callable

from deploy_app.node.inbox import Inbox, utc_now
from deploy_app.qa import qa_summary
from deploy_app.runner import REPORT_NAME
from spleenseg.atomic import atomic_file

log = logging.getLogger("deploy_app.node")


def build_status(inbox: Inbox, node_info: dict[str, Any], destination: dict[str, Any]) -> dict[str, Any]:
    """Queue lengths per state and the most recent jobs, newest first."""
    receiving = inbox.receiving()
    held = inbox.held()
    counts = {state: len(inbox.jobs_in(state)) for state in ("queued", "running", "outbox", "failed", "done")}
    return {
        "updated_at": utc_now(),
        "node": node_info,
        "destination": destination,
        "queue_length": len(receiving) + counts["queued"] + counts["running"] + counts["outbox"],
        "receiving": receiving,
        "held": held,
        "counts": {"receiving": len(receiving), "held": len(held), "queued": counts["queued"],
                   "running": counts["running"], "sending": counts["outbox"], "failed": counts["failed"],
                   "done": counts["done"]},
        "last_results": [_summary(job) for job in inbox.recent_jobs(20)],
    }


def _summary(job: Any) -> dict[str, Any]:
    keys = ("job_id", "study_uid", "state", "instances", "received_at", "started_at", "finished_at", "sent_at",
            "run_seconds", "outputs", "send_attempts", "error", "note", "results")
    data = job.as_dict()
    return {k: data[k] for k in keys}


def report_results(output_dir: Path) -> list[dict[str, Any]]:
    """Per series of the pipeline's ``spleen_report.json``: UID, spleen volume, SEG file, QA verdict and raised
    flags. Read once when a job finishes and kept in ``job.json``, so the status never rereads reports.

    A pipeline without a report, or with one that cannot be read, gives an empty list (logged): the job's
    results are still sent, only their summary is missing.
    """
    path = output_dir / REPORT_NAME
    if not path.is_file():
        return []
    try:
        series = json.loads(path.read_text()).get("series", [])
        return [{"series_instance_uid": s.get("series_instance_uid"), "spleen_volume_ml": s.get("spleen_volume_ml"),
                 "seg_file": s.get("seg_file"), **qa_summary(s.get("qa"))} for s in series]
    except (OSError, ValueError, AttributeError) as exc:
        log.warning("%s: cannot read the report's results (%s)", path, exc)
        return []


def describe_results(results: list[dict[str, Any]]) -> str:
    """One log-line fragment: each series' volume, verdict and raised flags."""
    parts = []
    for r in results:
        volume = r.get("spleen_volume_ml")
        flags = f" [{', '.join(r['flags'])}]" if r.get("flags") else ""
        parts.append(f"series {r.get('series_instance_uid')}: spleen "
                     f"{'?' if volume is None else f'{volume:.1f}'} mL, QA {r.get('verdict') or 'none'}{flags}")
    return "; ".join(parts) or "no report"


def write_status(path: Path, status: dict[str, Any]) -> None:
    with atomic_file(path) as tmp:  # a unique temporary name, then a rename: readers never see half a file
        tmp.write_text(json.dumps(status, indent=2))


class StatusServer:
    """A tiny read-only HTTP server in a daemon thread."""

    def __init__(self, host: str, port: int, get_status: Callable[[], dict[str, Any]]) -> None:
        handler = _make_handler(get_status)
        self.httpd = ThreadingHTTPServer((host, port), handler)
        self.port = self.httpd.server_address[1]
        self._thread = threading.Thread(target=self.httpd.serve_forever, name="status-http", daemon=True)
        self._thread.start()
        log.info("status endpoint: http://%s:%d/status", host, self.port)

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


def _make_handler(get_status: Callable[[], dict[str, Any]]) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 - http.server's naming
            if self.path.rstrip("/") in ("/status", ""):
                body, code = json.dumps(get_status(), indent=2).encode(), 200
            elif self.path.rstrip("/") == "/health":
                body, code = json.dumps({"ok": True, "time": time.time()}).encode(), 200
            else:
                body, code = b'{"error": "not found; try /status or /health"}', 404
            self.send_response(code)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, fmt: str, *args: Any) -> None:  # keep the node log for studies
            log.debug("status http: " + fmt, *args)

    return Handler
