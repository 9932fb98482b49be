"""Run the segmentation pipeline on one study in a child process.

Why a child process per study: the pipeline loads torch and Holoscan, may take minutes, and may crash or hang.
In its own process a crash or a hang (killed after ``job_timeout_seconds``) fails that one study while the node
keeps receiving; its memory is returned after each study; and everything it prints (including Holoscan's C++
logging) lands in the study's ``job.log``.

A pipeline is any importable function ``run(input_dir, output_dir, model_path, **options)`` that writes its
results into ``output_dir`` and raises on failure, i.e. ``deploy_app.run``. It is given either as
``"module:function"`` (resolved in the child, so the node never imports torch) or as a module-level callable.
When it returns a result whose ``seg_files`` is an empty list (``deploy_app.RunResult`` when no spleen was
found), the child exits with :data:`~deploy_app.runner.EXIT_NO_RESULT` (3), as ``python -m deploy_app`` does:
finished, nothing to send.
"""

from __future__ import annotations

import importlib
import importlib.util
import multiprocessing
import os
import pickle
import sys
import threading
import time
import traceback
from pathlib import Path
from typing import Any, Callable, Union

from deploy_app.runner import EXIT_NO_RESULT
from spleenseg.errors import InputError

Pipeline = Union[str, Callable[..., Any]]
_MP = multiprocessing.get_context("spawn")  # a clean interpreter: no inherited threads or sockets


class PipelineError(RuntimeError):
    """The pipeline failed on a study; the message is the one-line reason shown in logs and status."""


def check_pipeline(pipeline: Pipeline) -> None:
    """Fail at start-up, not on the first study, when the pipeline cannot be found or sent to a child."""
    if isinstance(pipeline, str):  # its 'module:function' form is checked with the config
        module = pipeline.partition(":")[0]
        if importlib.util.find_spec(module) is None:
            raise InputError(f"pipeline {pipeline!r}: module {module!r} is not importable")
        return
    try:
        pickle.dumps(pipeline)
    except (pickle.PicklingError, AttributeError, TypeError) as exc:
        raise InputError(f"pipeline {pipeline!r} must be a module-level function: {exc}") from None


def resolve(pipeline: Pipeline) -> Callable[..., Any]:
    """Import ``"module:function"`` (done in the child process)."""
    if callable(pipeline):
        return pipeline
    module, _, attr = pipeline.partition(":")
    func = importlib.import_module(module)
    for part in attr.split("."):
        func = getattr(func, part)
    if not callable(func):
        raise InputError(f"pipeline {pipeline!r} is not callable")
    return func  # type: ignore[return-value]


class PipelineRunner:
    """Starts one child process per study and remembers them so that :meth:`terminate_all` can stop them."""

    def __init__(self, pipeline: Pipeline, model_path: str | None, options: dict[str, Any], timeout: float):
        check_pipeline(pipeline)
        self.pipeline, self.model_path, self.options, self.timeout = pipeline, model_path, options, timeout
        self._active: set[multiprocessing.process.BaseProcess] = set()
        self._lock = threading.Lock()
        self._stopping = False

    def run(self, input_dir: Path, output_dir: Path, log_path: Path,
            on_start: Callable[[int], None] | None = None) -> bool:
        """Run the pipeline; ``False`` when it finished with nothing to send (exit status
        :data:`EXIT_NO_RESULT`), ``True`` when it produced results. Raise :class:`PipelineError` with a one-line
        reason when it fails.

        ``on_start`` gets the child's pid (recorded in ``job.json`` so an operator can find the process).
        """
        error_path = log_path.with_name("error.txt")
        error_path.unlink(missing_ok=True)  # a reason left by an earlier run of the job is not this run's
        proc = _MP.Process(
            target=_child_main,
            args=(self.pipeline, str(input_dir), str(output_dir), self.model_path, self.options, str(log_path),
                  str(error_path)),
            name=f"pipeline-{input_dir.parent.name}",
        )
        with self._lock:
            if self._stopping:
                raise PipelineError("node is stopping")
            proc.start()
            self._active.add(proc)
        try:
            if on_start is not None and proc.pid is not None:
                on_start(proc.pid)
            proc.join(self.timeout or None)
            if proc.is_alive():
                _stop(proc)
                raise PipelineError(f"pipeline did not finish within job_timeout_seconds={self.timeout:g}; killed")
        finally:
            with self._lock:
                self._active.discard(proc)
        if proc.exitcode == EXIT_NO_RESULT and not error_path.is_file():
            return False
        if proc.exitcode != 0:
            if self._stopping:
                raise PipelineError("node is stopping")
            if error_path.is_file():
                raise PipelineError(error_path.read_text().strip())
            raise PipelineError(f"pipeline process ended with exit code {proc.exitcode} (crashed or killed)")
        return True

    def terminate_all(self) -> None:
        with self._lock:
            self._stopping = True
            procs = list(self._active)
        for proc in procs:
            _stop(proc)


def _stop(proc: multiprocessing.process.BaseProcess) -> None:
    proc.terminate()
    proc.join(10)
    if proc.is_alive():
        proc.kill()
        proc.join()


def _child_main(pipeline: Pipeline, input_dir: str, output_dir: str, model_path: str | None,
                options: dict[str, Any], log_path: str, error_path: str) -> None:
    """Entry point of the child: send all output to the job log, run, write the reason on failure."""
    _exit_with_parent()
    log_fd = os.open(log_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    sys.stdout.flush()
    sys.stderr.flush()
    os.dup2(log_fd, 1)
    os.dup2(log_fd, 2)
    import logging

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s",
                        stream=sys.stderr, force=True)
    try:
        func = resolve(pipeline)
        print(f"running {getattr(func, '__module__', '?')}.{getattr(func, '__qualname__', func)} "
              f"on {input_dir}", flush=True)
        result = func(input_dir, output_dir, model_path, **options)
    except BaseException as exc:  # noqa: BLE001 - every failure must reach the parent as a clear reason
        traceback.print_exc()
        sys.stderr.flush()
        Path(error_path).write_text(f"{type(exc).__name__}: {exc}".strip() + "\n")
        os._exit(1)
    sys.stdout.flush()
    sys.stderr.flush()
    if nothing_to_send(result):
        os._exit(EXIT_NO_RESULT)


def nothing_to_send(result: Any) -> bool:
    """True for a pipeline result that lists its SEG files and has none (``deploy_app.RunResult``)."""
    seg_files = getattr(result, "seg_files", None)
    return isinstance(seg_files, list) and not seg_files


def _exit_with_parent(interval: float = 0.5) -> None:
    """Exit when the node dies (even by SIGKILL), so that a restarted node never races an orphaned run."""
    parent = os.getppid()

    def watch() -> None:
        while True:
            time.sleep(interval)
            if os.getppid() != parent:
                os._exit(1)  # nobody reads it; not EXIT_NO_RESULT, which means "finished, nothing to send"

    threading.Thread(target=watch, name="parent-watch", daemon=True).start()
