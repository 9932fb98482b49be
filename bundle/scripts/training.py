"""Training helpers for ``train.json``: resume from a full-state checkpoint, per-epoch metrics, curves.

Why: the model-zoo bundle saves only the network, so an interrupted run cannot continue; and its metrics
live only in TensorBoard event files. Here every epoch is appended to ``metrics.json``/``metrics.csv`` and
the learning curves are redrawn at each validation, so a researcher can read progress with any tool.
"""

from __future__ import annotations

import csv
import json
import logging
import os
import re
import time
from pathlib import Path
from typing import Any

import torch
from ignite.engine import Engine, Events

from .errors import InputError
from .files import write_text_atomic
from .optional import library_function

logger = logging.getLogger(__name__)
_EPOCH_RE = re.compile(r"epoch=(\d+)\.pt$")


def is_rank0() -> bool:
    """True outside ``torch.distributed`` or on rank 0: only one process writes files."""
    dist = torch.distributed
    return not (dist.is_available() and dist.is_initialized()) or dist.get_rank() == 0


def find_resume_checkpoint(resume: Any, state_dir: str | os.PathLike) -> str | None:
    """Checkpoint to resume from, or ``None`` for a fresh run.

    ``resume`` may be ``False``/``None`` (fresh start), ``True`` (the newest ``checkpoint_epoch=N.pt`` in
    ``state_dir``) or an explicit path. Asking to resume when there is nothing to resume is an error, not a
    silent fresh start: a silent restart would overwrite the best model with an untrained one.
    """
    if resume in (None, False, "", "false", "False", 0):
        return None
    if isinstance(resume, (str, os.PathLike)) and str(resume).lower() != "true":
        if not Path(resume).is_file():
            raise InputError(f"{resume}: resume checkpoint does not exist")
        return str(resume)
    found = [(int(m.group(1)), p) for p in Path(state_dir).glob("*.pt") if (m := _EPOCH_RE.search(p.name))]
    if not found:
        raise InputError(f"{state_dir}: --resume was given but there is no checkpoint_epoch=N.pt to resume from")
    return str(max(found)[1])


class SaverState:
    """The best-model tracking of the validation evaluator and its ``CheckpointSaver``, as one state object.

    Stored inside the full-state checkpoint so that after ``--resume`` the first validation does not
    overwrite ``models/model.pt`` with a worse model (the saver would otherwise forget the best score), and the
    log's "best value ... at epoch" line still names the best epoch of the whole run, not of the resumed part.
    The state comes from the evaluator's public ``best_metric``/``best_metric_epoch``; the saver is given it back
    through its public ``load_state_dict`` as ignite's ``Checkpoint`` list of ``(priority, file name)``: one
    entry, ``model.pt`` with the best score (the saver keeps one best model). ``saver`` is ``None`` where the
    config disables it (ranks other than 0): nothing to save or restore there.
    """

    def __init__(self, saver: Any, evaluator: Any = None, filename: str = "model.pt") -> None:
        self.saver = saver
        self.evaluator = evaluator
        self.filename = filename

    def state_dict(self) -> dict:
        if self.saver is None or self.evaluator is None:
            return {}
        best, epoch = float(self.evaluator.state.best_metric), int(self.evaluator.state.best_metric_epoch)
        state: dict = {"evaluator_best": [best, epoch]}
        if epoch > 0:  # a validation has run and the saver wrote the best model
            state["_saved"] = [(best, self.filename)]
        return state

    def load_state_dict(self, state: dict) -> None:
        best = state.get("evaluator_best")
        if best is not None and self.evaluator is not None:
            self.evaluator.state.best_metric, self.evaluator.state.best_metric_epoch = best[0], int(best[1])
        saved = {k: v for k, v in state.items() if k != "evaluator_best"}
        if saved and self.saver is not None:
            self.saver.load_state_dict(saved)


class PruneCheckpoints:
    """Keep only the newest ``keep`` full-state checkpoints in ``state_dir`` after each epoch's save.

    Why: ``CheckpointSaver(n_saved=...)`` prunes only the files it wrote itself, so every resumed run would
    leave the previous run's last checkpoint behind (each is the size of the network plus Adam's moments).
    """

    def __init__(self, state_dir: str | os.PathLike, keep: int = 1) -> None:
        self.state_dir = Path(state_dir)
        self.keep = max(1, int(keep))

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.EPOCH_COMPLETED, self)

    def __call__(self, engine: Engine | None = None) -> list[Path]:
        found = sorted((int(m.group(1)), p) for p in self.state_dir.glob("*.pt") if (m := _EPOCH_RE.search(p.name)))
        removed = [p for _, p in found[:-self.keep]]
        for path in removed:
            path.unlink(missing_ok=True)
        return removed


class FinishedRunHint:
    """Say so when a resumed run is already at ``--epochs``: ignite then trains nothing and exits at once."""

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.STARTED, self)

    def __call__(self, engine: Engine) -> None:
        if engine.state.max_epochs is not None and engine.state.epoch >= engine.state.max_epochs:
            logger.warning("the resumed run already finished epoch %d of --epochs %d: nothing to train; pass "
                           "--epochs N with N > %d to train longer", engine.state.epoch, engine.state.max_epochs,
                           engine.state.epoch)


def _scalar(value: Any) -> float | None:
    """Metric value as a float (None when it is not a scalar)."""
    try:
        return float(value.item() if hasattr(value, "item") else value)
    except (TypeError, ValueError, RuntimeError):
        return None


class EpochMetricsWriter:
    """Per-epoch training record: mean loss, learning rate, wall time and every validation metric.

    Attach to the trainer *after* ``ValidationHandler`` (handler order = attach order) so this epoch's
    validation metrics are already in ``validator.state.metrics``. Writes ``metrics.json``, ``metrics.csv``
    and, after each validation, the learning-curve PNG (best epoch marked). On ``--resume`` the existing
    history up to the restored epoch is kept and continued.
    """

    def __init__(
        self,
        output_dir: str,
        validator: Any = None,
        optimizer: Any = None,
        key_metric: str = "val_mean_dice",
        curves_png: str = "learning_curves.png",
    ) -> None:
        self.output_dir = Path(output_dir)
        self.validator = validator
        self.optimizer = optimizer
        self.key_metric = key_metric
        self.curves_png = curves_png
        self.rows: list[dict[str, Any]] | None = None
        self._losses: list[float] = []
        self._t0 = 0.0

    @property
    def json_path(self) -> Path:
        return self.output_dir / "metrics.json"

    def attach(self, engine: Engine) -> None:
        if not is_rank0():
            return
        engine.add_event_handler(Events.EPOCH_STARTED, self._epoch_started)
        engine.add_event_handler(Events.ITERATION_COMPLETED, self._iteration_completed)
        engine.add_event_handler(Events.EPOCH_COMPLETED, self._epoch_completed)

    def _load_history(self, before_epoch: int) -> list[dict[str, Any]]:
        """Rows of a previous (resumed) run up to ``before_epoch``; later rows belong to a lost future."""
        if before_epoch <= 1 or not self.json_path.is_file():
            return []
        rows = json.loads(self.json_path.read_text())
        return [r for r in rows if int(r["epoch"]) < before_epoch]

    def _epoch_started(self, engine: Engine) -> None:
        if self.rows is None:
            self.rows = self._load_history(engine.state.epoch)
        self._losses = []
        self._t0 = time.perf_counter()

    def _iteration_completed(self, engine: Engine) -> None:
        output = engine.state.output
        items = output if isinstance(output, list) else [output]
        for item in items:
            loss = _scalar(item.get("loss")) if isinstance(item, dict) else None
            if loss is not None:
                self._losses.append(loss)
                break

    def _validation_metrics(self, epoch: int) -> dict[str, float]:
        state = getattr(self.validator, "state", None)
        if state is None or getattr(state, "epoch", None) != epoch:
            return {}
        return {k: v for k, v in ((k, _scalar(v)) for k, v in state.metrics.items()) if v is not None}

    def _epoch_completed(self, engine: Engine) -> None:
        epoch = engine.state.epoch
        row: dict[str, Any] = {
            "epoch": epoch,
            "train_loss": sum(self._losses) / len(self._losses) if self._losses else None,
            "lr": self.optimizer.param_groups[0]["lr"] if self.optimizer is not None else None,
            "epoch_time_s": round(time.perf_counter() - self._t0, 3),
        }
        val = self._validation_metrics(epoch)
        row.update(val)
        assert self.rows is not None
        self.rows.append(row)
        self._write()
        logger.info(
            "epoch %d/%d: " + ", ".join(f"{k}={v:.4g}" for k, v in row.items() if isinstance(v, float)),
            epoch, engine.state.max_epochs,
        )
        if val:
            self._plot()

    def _write(self) -> None:
        assert self.rows is not None
        write_text_atomic(self.json_path, json.dumps(self.rows, indent=1))
        columns: list[str] = []
        for row in self.rows:
            columns += [k for k in row if k not in columns]
        lines: list[str] = []

        class _Sink:
            def write(self, s: str) -> None:
                lines.append(s)

        writer = csv.DictWriter(_Sink(), fieldnames=columns, lineterminator="\n")
        writer.writeheader()
        writer.writerows(self.rows)
        write_text_atomic(self.output_dir / "metrics.csv", "".join(lines))

    def _plot(self) -> None:
        plot_learning_curves = library_function(
            "spleenseg.report.curves", "plot_learning_curves",
            "learning-curve PNG skipped", "metrics.json and metrics.csv are written")
        if plot_learning_curves is None:
            return
        try:
            plot_learning_curves(self.rows or [], self.output_dir / self.curves_png, key_metric=self.key_metric)
        except Exception:  # a plotting problem must never kill a long training run
            logger.exception("could not draw the learning curves")


class ProgressBar:
    """tqdm progress bar over the iterations of an epoch showing the running loss (rank 0 only)."""

    def __init__(self, desc: str = "train", persist: bool = True) -> None:
        self.desc = desc
        self.persist = persist

    def attach(self, engine: Engine) -> None:
        if not is_rank0():
            return
        from ignite.handlers import ProgressBar as _IgniteProgressBar

        def _loss(output: Any) -> dict[str, float]:
            item = output[0] if isinstance(output, list) and output else output
            loss = _scalar(item.get("loss")) if isinstance(item, dict) else None
            return {"loss": loss} if loss is not None else {}

        _IgniteProgressBar(desc=self.desc, persist=self.persist).attach(engine, output_transform=_loss)


def attach(engine: Engine, handlers: list[Any]) -> Engine:
    """Attach handlers after the engine exists (skipping disabled ones, which the config resolves to None).

    Used for handlers that need the trainer itself in their state (resume loader, full-state saver):
    listing them in ``train_handlers`` would make the config reference itself.
    """
    for handler in handlers:
        if handler is not None:
            handler.attach(engine)
    return engine
