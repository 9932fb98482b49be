"""Sharded, resumable batch inference for ``batch_inference.json`` (one process, or one per rank under torchrun).

Why: ``inference.json`` runs one evaluator over one folder; a single bad file stops it and a killed run starts
again from zero. Here each rank takes its share of the datalist (``monai.data.partition_dataset``, interleaved,
no shuffling, so the split depends only on the sorted inputs and the world size), runs the bundle's own
pre-processing, inferer, network and post-processing on one case at a time, and publishes each case on its own:
the files are written to the rank's staging folder and renamed into place, then one JSON line is appended to
``manifest.rank-<R>.jsonl``. A re-run skips every input whose newest manifest line says it succeeded and whose
output still has the recorded SHA-256, so a killed job resumes where it stopped, whatever the new world size.
A case that fails is recorded with its error and skipped; it never stops its rank. The last step merges every
rank's lines into ``manifest.csv``.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import logging
import os
import shutil
import time
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping, Sequence

import torch

from .errors import InputError, root_cause
from .errors import message as errors_message
from .files import write_text_atomic
from .inference import input_datalist, publish
from .transforms import SpleenQAWriter

log = logging.getLogger(__name__)

MANIFEST_GLOB = "manifest.rank-*.jsonl"
MERGED_NAME = "manifest.csv"
CSV_COLUMNS = ("input", "status", "output", "sha256", "spleen_volume_ml", "verdict", "flags", "seconds", "error",
               "rank", "finished")


@dataclass
class CaseRecord:
    """One manifest line: what happened to one input."""

    input: str
    status: str  # "done" or "failed"
    output: str = ""  # the mask, relative to the output folder
    sha256: str = ""
    files: list[str] = field(default_factory=list)  # every published file, relative to the output folder
    spleen_volume_ml: float | None = None
    verdict: str = ""
    flags: list[str] = field(default_factory=list)  # the raised QA flags
    seconds: float = 0.0
    error: str = ""
    rank: int = 0
    finished: str = ""  # UTC ISO time; the newest line per input wins


# ---------------------------------------------------------------------------------------------------- inputs
def read_csv_paths(csv_file: str, column: str = "image") -> list[str]:
    """The ``column`` of a CSV with a header (or the first column of a header-less one); relative paths are
    taken relative to the CSV's folder."""
    path = Path(csv_file)
    if not path.is_file():
        raise InputError(f"{path}: input CSV does not exist")
    rows = list(csv.reader(io.StringIO(path.read_text(errors="replace"))))
    rows = [r for r in rows if r and any(c.strip() for c in r)]
    if not rows:
        raise InputError(f"{path}: the CSV lists no input files")
    header = [c.strip() for c in rows[0]]
    if column in header:
        col, rows = header.index(column), rows[1:]
    elif header[0].endswith((".nii", ".nii.gz")):
        col = 0
    else:
        raise InputError(f"{path}: no '{column}' column (header: {', '.join(header)})")
    return [str((path.parent / r[col].strip()).absolute()) for r in rows if len(r) > col and r[col].strip()]


def read_dataset_json(dataset_json: str, split: str, base_dir: str | None = None) -> list[str]:
    """The images of one split of a decathlon-style ``dataset.json`` (``monai.data.load_decathlon_datalist``)."""
    from monai.data import load_decathlon_datalist

    path = Path(dataset_json)
    if not path.is_file():
        raise InputError(f"{path}: dataset.json does not exist")
    try:
        items = load_decathlon_datalist(str(path), is_segmentation=True, data_list_key=split, base_dir=base_dir)
    except (ValueError, KeyError, json.JSONDecodeError) as exc:
        raise InputError(f"{path}: cannot read split '{split}': {exc}") from exc
    return [str(item["image"] if isinstance(item, Mapping) else item) for item in items]


def batch_datalist(input_dir: str = "", input_file: str = "", input_csv: str = "", dataset_json: str = "",
                   dataset_split: str = "test", csv_column: str = "image") -> list[dict[str, str]]:
    """``[{"image": path}]`` from exactly one source (folder, file, CSV or dataset.json split): sorted, each input
    once, every file checked to exist, so the partition is the same on every rank and every re-run."""
    sources = [s for s in (input_dir, input_file, input_csv, dataset_json) if s]
    if len(sources) > 1:
        raise InputError("give one input: --input_dir, --input_file, --input_csv or --dataset_json")
    if input_csv:
        paths = read_csv_paths(input_csv, csv_column)
    elif dataset_json:
        paths = read_dataset_json(dataset_json, dataset_split)
    else:
        paths = [d["image"] for d in input_datalist(input_dir, input_file)]
    paths = sorted({str(Path(p).absolute()) for p in paths})
    missing = [p for p in paths if not Path(p).is_file()]
    if missing:
        more = f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""
        raise InputError(f"{missing[0]}: input file does not exist{more}")
    return [{"image": p} for p in paths]


def output_subdir(path: str, root: str) -> str:
    """The folder of ``path`` relative to ``root``: outputs mirror the input tree, so two inputs named
    ``ct.nii.gz`` in different folders never write the same file."""
    return os.path.relpath(os.path.dirname(path), root) if root else "."


def common_root(datalist: Sequence[Mapping[str, str]]) -> str:
    """The deepest folder that holds every input ('' for an empty list)."""
    folders = [os.path.dirname(d["image"]) for d in datalist]
    return os.path.commonpath(folders) if folders else ""


# -------------------------------------------------------------------------------------------------- manifests
def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def read_manifests(output_dir: str | Path) -> dict[str, CaseRecord]:
    """The newest line per input across every rank's manifest (lines that do not parse are skipped: a run
    killed while appending leaves at most one such line, at the end of its file)."""
    newest: dict[str, CaseRecord] = {}
    known = set(CaseRecord.__dataclass_fields__)
    for path in sorted(Path(output_dir).glob(MANIFEST_GLOB)):
        for number, line in enumerate(path.read_text(errors="replace").splitlines(), 1):
            if not line.strip():
                continue
            try:
                raw = json.loads(line)
                record = CaseRecord(**{k: v for k, v in raw.items() if k in known})
            except (ValueError, TypeError) as exc:
                log.warning("%s:%d: skipped a line that is not a manifest record (%s)", path, number, exc)
                continue
            old = newest.get(record.input)
            if old is None or record.finished >= old.finished:
                newest[record.input] = record
    return newest


def is_done(record: CaseRecord | None, output_dir: str | Path) -> bool:
    """True when the record says the case succeeded and its mask is still there with the same bytes."""
    if record is None or record.status != "done" or not record.output:
        return False
    path = Path(output_dir) / record.output
    return path.is_file() and sha256_of(path) == record.sha256


def append_record(manifest: Path, record: CaseRecord) -> None:
    """Append one line and make it durable before the next case starts (after a newline if a killed run left
    a half-written last line, so the new record is never glued to it)."""
    with open(manifest, "a+b") as fh:
        fh.seek(0, os.SEEK_END)
        if fh.tell():
            fh.seek(-1, os.SEEK_END)
            if fh.read(1) != b"\n":
                fh.write(b"\n")
        fh.write((json.dumps(asdict(record)) + "\n").encode())
        fh.flush()
        os.fsync(fh.fileno())


def merge_manifests(output_dir: str | Path) -> Path:
    """Write ``manifest.csv``: one row per input (the newest line from any rank), sorted by input.

    A ``done`` row whose mask is missing or changed since it was written is reported as ``failed``, so the CSV
    always matches the files beside it.
    """
    output_dir = Path(output_dir)
    records = read_manifests(output_dir)
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=CSV_COLUMNS, lineterminator="\n")
    writer.writeheader()
    for name in sorted(records):
        record = records[name]
        if record.status == "done" and not is_done(record, output_dir):
            record.status, record.error = "failed", f"{record.output}: output missing or changed since it was written"
        row = {k: getattr(record, k) for k in CSV_COLUMNS}
        row["flags"] = ";".join(record.flags)
        writer.writerow(row)
    target = output_dir / MERGED_NAME
    write_text_atomic(target, buffer.getvalue())
    return target


# --------------------------------------------------------------------------------------------- distribution
def init_distributed() -> None:
    """Join the process group when launched by torchrun (``WORLD_SIZE`` > 1 and ``MASTER_ADDR`` set).

    Shards started by a scheduler instead (a Slurm array, a Kubernetes Indexed Job) pass ``--rank`` and
    ``--world_size`` and stay independent processes.
    """
    import torch.distributed as dist

    if int(os.environ.get("WORLD_SIZE", "1")) > 1 and "MASTER_ADDR" in os.environ and not dist.is_initialized():
        dist.init_process_group(backend="nccl" if torch.cuda.is_available() else "gloo")


def finish(output_dir: str, world_size: int = 1) -> str:
    """Write ``manifest.csv`` once every rank is done: rank 0 of a torchrun group, or a lone process. A shard
    started by a scheduler (``--world_size`` > 1 without torchrun) cannot know when the others end, so it
    leaves the merge to ``run merge``. Returns what was done, for the run's last line."""
    import torch.distributed as dist

    if dist.is_initialized():
        dist.barrier()
        rank0 = dist.get_rank() == 0
    elif world_size > 1:
        return f"shard done; after the last shard: python -m monai.bundle run merge ... --output_dir {output_dir}"
    else:
        rank0 = True
    done = str(merge_manifests(output_dir)) if rank0 else ""
    if dist.is_initialized():
        dist.destroy_process_group()
    return done


# ----------------------------------------------------------------------------------------------- the runner
class BatchInference:
    """Run the bundle's inference graph over this rank's share of ``datalist``, one published case at a time."""

    def __init__(self, datalist: Sequence[Mapping[str, str]], preprocessing: Callable, inferer: Callable,
                 network: torch.nn.Module, postprocessing: Callable, ckpt_path: str, output_dir: str,
                 staging_dir: str, device: torch.device | str = "cpu", amp: bool = False, rank: int = 0,
                 world_size: int = 1, output_postfix: str = "seg", output_ext: str = ".nii.gz",
                 qa_key: str = "spleen_qa", progress: bool = True) -> None:
        from monai.data import partition_dataset

        if not Path(ckpt_path).is_file():
            raise InputError(f"{ckpt_path}: checkpoint does not exist")
        self.all_cases = list(datalist)
        self.cases = partition_dataset(self.all_cases, num_partitions=world_size, shuffle=False,
                                       even_divisible=False)[rank] if self.all_cases else []
        self.preprocessing, self.inferer, self.postprocessing = preprocessing, inferer, postprocessing
        self.network, self.ckpt_path = network, ckpt_path
        self.output_dir, self.staging = Path(output_dir), Path(staging_dir)
        self.device, self.amp = torch.device(device), bool(amp)
        self.rank, self.world_size, self.qa_key = rank, world_size, qa_key
        self.mask_suffix = f"_{output_postfix}{output_ext}"
        self.progress = progress and rank == 0
        self.root = common_root(self.all_cases)
        self.manifest = self.output_dir / f"manifest.rank-{rank}.jsonl"

    def load_weights(self) -> None:
        """The checkpoint as ``inference.json``'s CheckpointLoader reads it (``{"model": network}``)."""
        from ignite.handlers import Checkpoint

        checkpoint = torch.load(self.ckpt_path, map_location=self.device, weights_only=True)
        Checkpoint.load_objects(to_load={"model": self.network}, checkpoint=checkpoint)
        self.network.eval()

    def run(self) -> dict[str, int]:
        """Process every case of this rank not done before; returns the counts of done, skipped and failed."""
        self.output_dir.mkdir(parents=True, exist_ok=True)
        previous = read_manifests(self.output_dir)
        todo = [c for c in self.cases if not is_done(previous.get(c["image"]), self.output_dir)]
        counts = {"done": 0, "skipped": len(self.cases) - len(todo), "failed": 0}
        log.info("rank %d/%d: %d cases, %d already done, %d to run", self.rank, self.world_size,
                 len(self.cases), counts["skipped"], len(todo))
        if todo:
            self.load_weights()
        for case in self._progress(todo):
            record = self.run_case(case["image"])
            append_record(self.manifest, record)
            counts[record.status] += 1
        log.info("rank %d: %d done, %d skipped (done before), %d failed", self.rank, counts["done"],
                 counts["skipped"], counts["failed"])
        return counts

    def _progress(self, cases: list) -> Iterable:
        if not self.progress:
            return cases
        from monai.utils import optional_import

        tqdm, has_tqdm = optional_import("tqdm", name="tqdm")
        return tqdm(cases, desc=f"rank {self.rank}", unit="case") if has_tqdm else cases

    def run_case(self, image: str) -> CaseRecord:
        """One case: infer, publish its files, and describe the outcome; any error becomes a failed record."""
        start = time.perf_counter()
        shutil.rmtree(self.staging, ignore_errors=True)
        self.staging.mkdir(parents=True)
        try:
            item = self.infer(image)
            record = self.publish(image, item)
        except Exception as exc:  # one bad case is recorded and skipped, never the end of the rank
            cause = root_cause(exc)
            message = (f"{type(cause).__name__}: {errors_message(cause)}".splitlines() or ["error"])[0]
            log.error("%s: %s", image, message)
            record = CaseRecord(input=image, status="failed", error=message)
        finally:
            shutil.rmtree(self.staging, ignore_errors=True)
        record.seconds = round(time.perf_counter() - start, 2)
        record.rank = self.rank
        record.finished = datetime.now(timezone.utc).isoformat(timespec="microseconds")
        return record

    def infer(self, image: str) -> dict[str, Any]:
        """The bundle graph on one file: pre-processing, sliding window, post-processing (which saves into
        the staging folder)."""
        data = self.preprocessing({"image": image})
        batch = data["image"].unsqueeze(0).to(self.device)
        with torch.no_grad(), torch.autocast(self.device.type, enabled=self.amp):
            data["pred"] = self.inferer(batch, self.network)[0]
        return self.postprocessing(data)

    def publish(self, image: str, item: Mapping[str, Any]) -> CaseRecord:
        """Write the QA JSON beside the staged mask (as ``inference.json``'s handler does), move the staged
        files into the output tree, and describe the case."""
        qa = item.get(self.qa_key) or {}
        if qa:
            SpleenQAWriter(str(self.staging), qa_key=self.qa_key).write(item)
        if not any(p.name.endswith(self.mask_suffix) for p in self.staging.rglob("*")):
            raise RuntimeError("the post-processing wrote no mask")
        subdir = self.output_dir / output_subdir(image, self.root)
        published = sorted(os.path.relpath(p, self.output_dir) for p in publish(str(self.staging), str(subdir)))
        mask = next(p for p in published if p.endswith(self.mask_suffix))
        flags = [k for k, v in (qa.get("flags") or {}).items() if v]
        return CaseRecord(input=image, status="done", output=mask, sha256=sha256_of(self.output_dir / mask),
                          files=published, spleen_volume_ml=qa.get("spleen_volume_ml"),
                          verdict=qa.get("verdict", ""), flags=flags)
