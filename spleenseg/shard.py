"""Sharded folder jobs: ``--shard I/N`` runs ``group`` / ``to_nifti`` on a deterministic 1/N of the series.

Why: a large archive converts faster as N independent jobs (a Slurm array, a Kubernetes Indexed Job, a shell
loop) than as one. Each job must pick its series without talking to the others, so the choice is a pure
function of the series: ``sha256(SeriesInstanceUID)`` modulo N. Never Python's ``hash()``: it is salted per
process (PYTHONHASHSEED), so two jobs would disagree on who owns what. All parts and chunks of one series UID
share a shard, so shards never write the same file.

Each shard writes ``manifest.shard-I-of-N.json`` (distinct names: shards in one OUT never clobber each other);
:func:`merge_manifests` checks that the N shards agree and are all there, and joins them into the
``manifest.json`` an unsharded run writes.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol, Sequence

from spleenseg.errors import InputError

#: The manifest of an unsharded run, and of merged shards.
MANIFEST = "manifest.json"
_SHARD_MANIFEST = re.compile(r"manifest\.shard-(\d+)-of-(\d+)\.json")
_SHARD_OPTION = re.compile(r"\s*(\d+)\s*/\s*(\d+)\s*")


class HasSeriesUID(Protocol):
    """Anything with a Series Instance UID (a :class:`spleenseg.dicom.SeriesGroup`)."""

    series_uid: str


def shard_of(series_uid: str, count: int) -> int:
    """Shard (0 to ``count - 1``) owning a series: first 8 bytes of sha256(UTF-8 UID), big-endian, mod ``count``.

    Stable across processes, machines and Python versions, and easy to reproduce in any language.
    """
    digest = hashlib.sha256(series_uid.encode("utf-8", "surrogatepass")).digest()
    return int.from_bytes(digest[:8], "big") % count


@dataclass(frozen=True)
class Shard:
    """Shard ``index`` of ``count``, counted from 0 (as ``$SLURM_ARRAY_TASK_ID`` with ``--array=0-N-1`` and
    ``$JOB_COMPLETION_INDEX`` do)."""

    index: int
    count: int

    def __str__(self) -> str:
        return f"{self.index}/{self.count}"

    @property
    def manifest_name(self) -> str:
        """This shard's manifest file name, distinct for every I and N."""
        return f"manifest.shard-{self.index}-of-{self.count}.json"

    def owns(self, series_uid: str) -> bool:
        """True when this shard converts the series."""
        return shard_of(series_uid, self.count) == self.index

    def positions(self, items: Sequence[HasSeriesUID]) -> list[int]:
        """Indices of the items this shard owns; kept in the manifest so the merge restores the full order."""
        return [i for i, item in enumerate(items) if self.owns(item.series_uid)]

    def record(self, positions: list[int], total: int) -> dict[str, Any]:
        """The ``shard`` entry of a shard manifest: who wrote it, and which of the ``total`` series it holds."""
        return {"index": self.index, "count": self.count, "series_total": total, "positions": positions}


def parse_shard(value: object) -> Shard | None:
    """``"I/N"`` (from ``--shard``) as a :class:`Shard`; ``None`` stays ``None``. Anything else is an InputError."""
    if value is None:
        return None
    match = _SHARD_OPTION.fullmatch(value) if isinstance(value, str) else None
    if not match:
        raise InputError(f"--shard {value!r}: expected I/N, shard I (counting from 0) of N, e.g. --shard 0/4")
    index, count = int(match[1]), int(match[2])
    if count < 1:
        raise InputError(f"--shard {value!r}: the shard count N must be at least 1")
    if index >= count:
        raise InputError(f"--shard {value!r}: the shard index I must be 0 to {count - 1} for N={count}")
    return Shard(index, count)


def _shard_manifests(folder: Path) -> dict[Path, Shard]:
    """The shard manifests in ``folder``, by file name."""
    if not folder.is_dir():
        return {}
    matches = ((path, _SHARD_MANIFEST.fullmatch(path.name)) for path in sorted(folder.glob("manifest.shard-*")))
    return {path: Shard(int(m[1]), int(m[2])) for path, m in matches if m}


def check_shard_output(out: Path, shard: Shard) -> None:
    """Refuse an OUT that was already merged, or holds shards of another N (their series would overlap ours)."""
    if (out / MANIFEST).exists():
        raise InputError(f"{out / MANIFEST}: the output folder is already merged or unsharded; choose a new one")
    for path, other in _shard_manifests(out).items():
        if other.count != shard.count:
            raise InputError(f"{path}: the output folder holds shards of N={other.count}, not {shard.count}; "
                             "use the same N for every shard, or a new folder")


def _load(path: Path, expected: Shard) -> dict[str, Any]:
    """A shard manifest, checked for the entries the merge relies on and against its file name."""
    try:
        data = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise InputError(f"{path}: unreadable shard manifest ({exc})") from exc
    shard = data.get("shard") if isinstance(data, dict) else None
    series = data.get("series") if isinstance(data, dict) else None
    if not (isinstance(shard, dict) and isinstance(series, list) and all(isinstance(e, dict) for e in series)
            and all(isinstance(shard.get(k), int) for k in ("index", "count", "series_total"))
            and isinstance(shard.get("positions"), list) and len(shard["positions"]) == len(series)
            and all(isinstance(p, int) for p in shard["positions"])):
        raise InputError(f"{path}: not a shard manifest (needs 'series' and a 'shard' entry with index, count, "
                         "series_total and one position per series)")
    if (shard["index"], shard["count"]) != (expected.index, expected.count):
        raise InputError(f"{path}: its 'shard' entry says {shard['index']}/{shard['count']}, its name {expected}")
    return data


def _check_complete(folder: Path, shards: dict[Path, Shard]) -> None:
    """All shards have the same N, and none of 0 to N-1 is missing."""
    counts = sorted({s.count for s in shards.values()})
    if len(counts) > 1:
        raise InputError(f"{folder}: the shards disagree on N ({', '.join(map(str, counts))}); "
                         "remove the shards of the wrong run and merge again")
    n = counts[0]
    missing = sorted(set(range(n)) - {s.index for s in shards.values()})
    if missing:
        raise InputError(f"{folder}: shard(s) {', '.join(map(str, missing))} of {n} missing (no "
                         f"{Shard(missing[0], n).manifest_name}); run them, then merge again")


def _run_of(data: dict[str, Any]) -> dict[str, Any]:
    """What all shards of one run share: command, source, options and the number of series in the input."""
    run = {k: v for k, v in data.items() if k not in ("series", "shard")}
    run["series_total"] = data["shard"]["series_total"]
    return run


def _check_same_run(manifests: dict[Path, dict[str, Any]]) -> None:
    (first_path, first), *others = [(path, _run_of(data)) for path, data in manifests.items()]
    for path, run in others:
        for key in sorted(set(first) | set(run)):
            if first.get(key) != run.get(key):
                raise InputError(f"{path}: {key} is {run.get(key)!r}, but {first.get(key)!r} in {first_path.name}; "
                                 "the shards come from different runs")


def _outputs(entry: dict[str, Any]) -> list[str]:
    """What one series entry writes: its files and, for ``group``, its folder."""
    return list(entry.get("files", [])) + ([entry["folder"]] if "folder" in entry else [])


def _join(folder: Path, manifests: dict[Path, dict[str, Any]], total: int) -> list[dict[str, Any]]:
    """The shards' series in the order of the unsharded run; each output and each position claimed once."""
    by_position: dict[int, dict[str, Any]] = {}
    claimed: dict[str, Path] = {}
    for path, data in manifests.items():
        for position, entry in zip(data["shard"]["positions"], data["series"]):
            for output in _outputs(entry):
                if output in claimed:
                    raise InputError(f"{folder / output}: claimed by two shards ({claimed[output].name} and "
                                     f"{path.name})")
                claimed[output] = path
            if position in by_position or not 0 <= position < total:
                raise InputError(f"{path}: series position {position} is repeated or not below {total}")
            by_position[position] = entry
    if len(by_position) != total:
        raise InputError(f"{folder}: the shards hold {len(by_position)} of the {total} series of the input")
    return [by_position[i] for i in range(total)]


def merge_manifests(folder: str | Path) -> dict[str, Any]:
    """Join the N shard manifests of ``folder`` into ``folder/manifest.json`` and remove them.

    Refused (InputError, nothing written) when the shards disagree on N, on the command, source or options,
    when a shard is missing, or when two shards claim the same output. The result is the manifest an
    unsharded run writes: same series, same order.
    """
    from spleenseg.dicom.nifti import write_json  # the writer of every manifest: identical bytes

    folder = Path(folder)
    shards = _shard_manifests(folder)
    if not shards:
        raise InputError(f"{folder}: no shard manifests (manifest.shard-I-of-N.json) to merge")
    _check_complete(folder, shards)
    manifests = {path: _load(path, shard) for path, shard in shards.items()}
    _check_same_run(manifests)
    first = next(iter(manifests.values()))
    merged = {k: v for k, v in first.items() if k != "shard"}
    merged["series"] = _join(folder, manifests, first["shard"]["series_total"])
    write_json(merged, folder / MANIFEST)
    for path in shards:
        path.unlink()
    return merged
