"""Folder-level jobs behind ``spleenseg-prepare group`` and ``to_nifti``: layout, manifest, parallel conversion.

Both jobs read the input only; outputs are built in a temporary place and moved into position, so an
interrupted run never leaves a half-written folder or file behind.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import shutil
from concurrent.futures import ProcessPoolExecutor, as_completed
from pathlib import Path
from typing import Any, NamedTuple, Optional

import highdicom as hd
import nibabel as nib
import numpy as np
from tqdm import tqdm

from spleenseg import __version__
from spleenseg.atomic import atomic_dir, ensure_writable_dir, make_temp_dir, output_error
from spleenseg.dicom.nifti import save_nifti, sidecar_path, to_ras_nifti, volume_to_nifti, write_json
from spleenseg.dicom.scan import SeriesGroup, is_localizer, read_header, scan_dicom
from spleenseg.dicom.seg import load_label_image, read_seg_labels, referenced_series_uids, resample_label_to_image
from spleenseg.dicom.volume import VolumeInfo, load_series_volume
from spleenseg.errors import GeometryError, InputError, OutputError, SpleensegError
from spleenseg.paths import inside, refuse_output_in_input
from spleenseg.shard import MANIFEST, Shard, check_shard_output

log = logging.getLogger(__name__)


# --------------------------------------------------------------------------------------------- group
def _place(src: str, dst: Path, link: bool) -> None:
    """Copy or link ``src`` to ``dst``; an OS error (full disk) is :class:`OutputError` naming ``dst``."""
    try:
        dst.parent.mkdir(parents=True, exist_ok=True)
        if link:
            try:
                os.link(src, dst)  # hard link: survives deleting the input, costs no space
            except OSError:
                os.symlink(os.path.abspath(src), dst)  # other file system
        else:
            shutil.copyfile(src, dst)  # content only: the copy gets the umask's mode, not the input's
    except OSError as exc:
        raise output_error(dst, exc, f"cannot {'link' if link else 'copy'} {src} here") from exc


def _empty_or_missing(path: Path) -> bool:
    return not path.exists() or (path.is_dir() and not any(path.iterdir()))


def _lay_out(groups: list[SeriesGroup], root: Path, link: bool, progress: bool) -> list[dict[str, Any]]:
    """Place each group's files in ``root/<patient>/<study>/<series>/``; returns the manifest entries."""
    entries = []
    for g in tqdm(groups, desc="laying out series", unit="series", disable=not progress):
        rel_dir = Path(g.patient_dir) / g.study_dir / g.series_dir
        rel_files = []
        for i, (src, uid) in enumerate(zip(g.files, g.sop_instance_uids)):
            rel = rel_dir / f"{i:05d}_{safe_uid(uid)}.dcm"
            _place(src, inside(root, rel, "file name"), link)
            rel_files.append(str(rel))
        entry = g.to_dict()
        entry["source_files"] = entry.pop("files")
        entry["files"] = rel_files
        entry["folder"] = str(rel_dir)
        entries.append(entry)
    return entries


def _group_shard(groups: list[SeriesGroup], out: Path, manifest: dict[str, Any], shard: Shard, link: bool,
                 progress: bool) -> list[SeriesGroup]:
    """Lay out this shard's series in a hidden folder inside ``out``, move each series folder into place (none
    may exist: another shard or an interrupted run wrote it), then write the shard's manifest."""
    positions = shard.positions(groups)
    mine = [groups[i] for i in positions]
    ensure_writable_dir(out)
    tmp = make_temp_dir(out, f".{shard.manifest_name}.", ".part")
    try:
        entries = _lay_out(mine, tmp, link, progress)
        for entry in entries:
            if (out / entry["folder"]).exists():
                raise InputError(f"{out / entry['folder']}: already exists (another shard or an interrupted run "
                                 f"of shard {shard} wrote it); remove it and run the shard again")
        for entry in entries:
            (out / entry["folder"]).parent.mkdir(parents=True, exist_ok=True)
            os.replace(tmp / entry["folder"], out / entry["folder"])
        write_json({**manifest, "series": entries, "shard": shard.record(positions, len(groups))},
                   out / shard.manifest_name)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return mine


def group_folder(in_dir: str | os.PathLike, out_dir: str | os.PathLike, *, link: bool = False,
                 slices_per_group: int | None = None, workers: int = 1, progress: bool = True,
                 shard: Shard | None = None) -> list[SeriesGroup]:
    """Scan ``in_dir``, lay the files out as ``OUT/<patient>/<study>/<series>/`` and write ``OUT/manifest.json``.

    ``OUT`` must not exist or be empty (we never overwrite). Files are copied (or hard/sym-linked with
    ``link=True``); file names become ``<index>_<SOPInstanceUID>.dcm`` in position order. With ``shard``, only
    the series the shard owns are laid out, into an ``OUT`` the other shards may share, and the manifest is
    ``OUT/manifest.shard-I-of-N.json`` (:func:`spleenseg.shard.merge_manifests` joins them). Returns the groups
    laid out.
    """
    out = Path(out_dir)
    if shard is not None:
        check_shard_output(out, shard)
    elif not _empty_or_missing(out):
        raise InputError(f"{out}: output folder exists and is not empty; choose a new one")
    refuse_output_in_input(in_dir, out)
    groups = scan_dicom(in_dir, workers=workers, progress=progress, slices_per_group=slices_per_group)
    for g in groups:
        if shard is None or shard.owns(g.series_uid):  # a shard reports its own series only
            _warn_header_problems(g)
    manifest = {"created_by": f"spleenseg {__version__} spleenseg-prepare group", "source": str(in_dir),
                "linked": bool(link), "slices_per_group": slices_per_group}
    if shard is not None:
        groups = _group_shard(groups, out, manifest, shard, link, progress)
    else:
        with atomic_dir(out) as tmp:
            write_json({**manifest, "series": _lay_out(groups, tmp, link, progress)}, tmp / MANIFEST)
    log.info("grouped %d series into %s", len(groups), out)
    return groups


def _warn_header_problems(group: SeriesGroup) -> None:
    """One warning per series whose headers hold text in a numeric field: ``group`` copies the files as they
    are (it reads no value it would get wrong), ``to_nifti`` will refuse the series."""
    if group.header_problems:
        more = len(group.header_problems) - 1
        log.warning("series %s: %s%s; copied as it is, but to_nifti will refuse this series", group.name,
                    group.header_problems[0], f" (and {more} more file(s))" if more else "")


#: Types that a manifest entry's values must have, by the annotation of the SeriesGroup field they fill.
_MANIFEST_TYPES: dict[str, tuple[type, ...]] = {
    "str": (str,), "int": (int,), "bool": (bool,), "int | None": (int, type(None)),
    "float | None": (int, float, type(None)), "list[str]": (list,), "list[float]": (list,),
    "list[float] | None": (list, type(None)),
}


def _check_manifest_entry(entry: Any, where: str) -> None:
    """Refuse an entry whose values are not what ``group`` writes (text where a number belongs, a string where a
    list of file names belongs): later steps would crash on them or, worse, read a string's letters as files."""
    if not isinstance(entry, dict):
        raise InputError(f"{where}: malformed manifest (a series entry is {type(entry).__name__}, not an object)")
    hints = {**{f.name: f.type for f in SeriesGroup.__dataclass_fields__.values()}, "files": "list[str]"}
    for key, value in entry.items():
        types = _MANIFEST_TYPES.get(str(hints.get(key)))
        if types is None:
            continue  # not a field group reads back (source_files, folder, slice_count...)
        bad = not isinstance(value, types) or (isinstance(value, bool) and bool not in types)
        if not bad and isinstance(value, list):
            item = (str,) if hints[key] == "list[str]" else (int, float)
            bad = not all(isinstance(v, item) and not isinstance(v, bool) for v in value)
        if bad:
            raise InputError(f"{where}: malformed manifest (series {str(entry.get('name'))[:80]!r}: {key} is "
                             f"{str(value)[:80]!r}, expected {hints[key]})")


def read_manifest(folder: str | os.PathLike) -> list[SeriesGroup]:
    """Series groups of a ``group`` output, file paths made absolute."""
    folder = Path(folder)
    where = folder / MANIFEST
    try:
        data = json.loads((folder / MANIFEST).read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:  # ValueError: invalid JSON, or bytes that are not UTF-8
        raise InputError(f"{where}: unreadable manifest ({exc})") from exc
    groups = []
    names: set[str] = set()
    try:
        for entry in data.get("series", []):
            _check_manifest_entry(entry, str(where))
            g = SeriesGroup.from_dict(entry)
            if not g.name or Path(g.name).name != g.name or g.name in (".", "..") or "\x00" in g.name:
                raise InputError(f"{where}: series name {g.name!r} is not a plain file name")
            if g.name in names:  # two series would be written to one file, the second over the first
                raise InputError(f"{where}: series name {g.name!r} appears twice")
            names.add(g.name)
            g.files = [str(inside(folder, f, f"file entry of {where}")) for f in entry["files"]]
            groups.append(g)
    except (AttributeError, KeyError, TypeError, ValueError) as exc:
        raise InputError(f"{where}: malformed manifest ({type(exc).__name__}: {exc})") from exc
    return groups


def safe_uid(uid: str) -> str:
    """A UID as a file-name part: the UID itself when it is a well-formed one (digits and dots, <= 64
    characters), else a deterministic slug plus a hash (a UID is file content and may hold ``/``, ``..``,
    NUL or hundreds of characters)."""
    if re.fullmatch(r"[0-9.]{1,64}", uid) and ".." not in uid:
        return uid
    digest = hashlib.sha1(uid.encode("utf-8", "replace")).hexdigest()[:12]
    return f"{re.sub(r'[^A-Za-z0-9]+', '_', uid)[:40].strip('_')}_{digest}"


# --------------------------------------------------------------------------------------------- to_nifti
def _sidecar(group: SeriesGroup, info: VolumeInfo) -> dict[str, Any]:
    data = group.to_dict()
    data.pop("files", None)
    data["n_files"] = len(group.files)
    data["conversion"] = {
        "tool": f"spleenseg {__version__} (highdicom geometry)",
        "sorted_by": info.sorted_by,
        "rescale": "RescaleSlope/RescaleIntercept (modality LUT) applied per slice",
        "resampled": info.resampled,
        "geometry_problems": info.problems,
        "notes": info.notes,
    }
    return data


def convert_group(group: SeriesGroup, out_dir: str | os.PathLike, resample: bool = False) -> str:
    """Convert one group to ``OUT/<group.name>.nii.gz`` (+ ``.json``); returns the NIfTI path."""
    info = VolumeInfo(series=group.name, n_files=len(group.files))
    volume = load_series_volume(group, resample=resample, info=info, check_numbers=True)
    path = Path(out_dir) / f"{group.name}.nii.gz"
    volume_to_nifti(volume, path, sidecar=_sidecar(group, info))
    return str(path)


class JobResult(NamedTuple):
    """What one conversion job returns (plain values: it crosses process boundaries)."""

    name: str
    path: Optional[str] = None  # the NIfTI written
    error: Optional[str] = None
    output_failed: bool = False  # the output, not the series, failed: stops the run
    errno: Optional[int] = None  # of the output's OSError


def _convert_job(args: tuple[SeriesGroup, str, bool]) -> JobResult:
    group, out_dir, resample = args
    try:
        return JobResult(group.name, path=convert_group(group, out_dir, resample))
    except OutputError as exc:  # the output, not this series: every later series would fail the same way
        return JobResult(group.name, error=str(exc), output_failed=True, errno=exc.errno)
    except SpleensegError as exc:
        return JobResult(group.name, error=str(exc))
    except Exception as exc:  # noqa: BLE001 - one damaged series must not stop the others; all are listed
        return JobResult(group.name, error=f"series {group.name}: {type(exc).__name__}: {exc}")


def _run_jobs(jobs: list[tuple[SeriesGroup, str, bool]], workers: int, progress: bool) -> list[JobResult]:
    """Run the conversions (in ``workers`` processes); stop at the first output error (full disk, read-only
    folder): what was written stays, complete, and the series not yet started are not tried."""
    results: list[JobResult] = []
    bar = tqdm(total=len(jobs), desc="converting series", unit="series", disable=not progress)
    try:
        if workers > 1 and len(jobs) > 1:
            with ProcessPoolExecutor(max_workers=workers) as pool:
                futures = [pool.submit(_convert_job, j) for j in jobs]
                seen = set()
                for fut in as_completed(futures):
                    seen.add(fut)
                    results.append(fut.result())
                    bar.update()
                    if results[-1].output_failed:
                        for other in futures:
                            other.cancel()
                        break
            # leaving the pool waits for the jobs that were already running: count what they did too
            results += [f.result() for f in futures if f not in seen and not f.cancelled()]
        else:
            for j in jobs:
                results.append(_convert_job(j))
                bar.update()
                if results[-1].output_failed:
                    break
    finally:
        bar.close()
    return results


def _skip_reason(g: SeriesGroup, modality: str | None, keep_localizers: bool) -> tuple[int, str] | None:
    """(log level, message) when ``to_nifti`` leaves the series out, ``None`` when it converts it."""
    if not g.is_image_volume:
        return logging.WARNING, f"series {g.name} ({g.modality}, {len(g.files)} files): not an image volume; skipped"
    if not keep_localizers and is_localizer(g.image_type):
        return logging.WARNING, f"series {g.name}: a localizer (scout); skipped (--keep-localizers converts it)"
    if modality and g.modality.upper() != modality.upper():
        return logging.INFO, f"series {g.name}: modality {g.modality}, not {modality}; skipped"
    return None


def convert_folder(in_dir: str | os.PathLike, out_dir: str | os.PathLike, *, resample: bool = False,
                   modality: str | None = None, keep_localizers: bool = False, workers: int = 1,
                   progress: bool = True, shard: Shard | None = None) -> list[str]:
    """Convert every image series below ``in_dir`` (a ``group`` output or any folder) to NIfTI in ``out_dir``.

    Localizers (scouts, ImageType ...\\LOCALIZER) are skipped with a warning unless ``keep_localizers``: they
    are projections, not volumes, and would otherwise land among the training images.
    Series are converted in parallel (``workers`` processes). A series that fails is reported; after all the
    others are written, :class:`GeometryError` lists every failure (so the command exits non-zero). An output
    that cannot be written (read-only, full) is :class:`OutputError`, one line, and stops the run.
    With ``shard``, only the series the shard owns are converted and, once all of them are written,
    ``OUT/manifest.shard-I-of-N.json`` lists them (:func:`spleenseg.shard.merge_manifests` joins the shards).
    """
    in_dir = Path(in_dir)
    if shard is not None:
        check_shard_output(Path(out_dir), shard)
    refuse_output_in_input(in_dir, out_dir)
    groups = read_manifest(in_dir) if (in_dir / MANIFEST).is_file() else scan_dicom(in_dir, workers=workers,
                                                                                     progress=progress)
    todo = []
    for g in groups:
        skip = _skip_reason(g, modality, keep_localizers)
        if skip is None:
            todo.append(g)
        elif shard is None or shard.owns(g.series_uid):  # a shard reports its own series only
            log.log(*skip)
    if not todo:
        raise InputError(f"{in_dir}: no image series to convert")
    try:
        ensure_writable_dir(Path(out_dir))  # one line now, not one per series later
    except InputError as exc:
        raise OutputError(str(exc)) from exc
    positions = list(range(len(todo))) if shard is None else shard.positions(todo)
    written = _convert_all([todo[i] for i in positions], out_dir, resample, workers, progress)
    if shard is not None:  # written last: a shard manifest says every series of the shard is in place
        manifest = {"created_by": f"spleenseg {__version__} spleenseg-prepare to_nifti", "source": str(in_dir),
                    "resample": bool(resample), "modality": modality, "keep_localizers": bool(keep_localizers),
                    "series": [_nifti_entry(todo[i]) for i in positions],
                    "shard": shard.record(positions, len(todo))}
        write_json(manifest, Path(out_dir) / shard.manifest_name)
    return written


def _nifti_entry(group: SeriesGroup) -> dict[str, Any]:
    """A ``to_nifti`` manifest entry: the series and the files :func:`convert_group` writes for it."""
    nifti = f"{group.name}.nii.gz"
    return {"name": group.name, "series_uid": group.series_uid, "files": [nifti, sidecar_path(nifti).name]}


def _convert_all(todo: list[SeriesGroup], out_dir: str | os.PathLike, resample: bool, workers: int,
                 progress: bool) -> list[str]:
    """Convert the groups (in parallel with ``workers`` > 1); raises GeometryError listing every failure, or
    OutputError at the first output that cannot be written."""
    jobs = [(g, str(out_dir), resample) for g in todo]
    written, failures = [], []
    results = _run_jobs(jobs, workers, progress)
    stop = next((r for r in results if r.output_failed), None)
    for r in sorted(results, key=lambda r: r.name):
        if r.error and not r.output_failed:
            failures.append(r.error)
        elif r.path:
            written.append(r.path)
    if stop is not None:
        err = OutputError(f"{stop.error}; stopped with {len(written)} of {len(jobs)} series written to {out_dir}"
                          + (f", {len(failures)} failed:\n  " + "\n  ".join(failures) if failures else ""))
        err.errno = stop.errno
        raise err
    if failures:  # listed once, here (not also logged one by one)
        raise GeometryError(f"{len(failures)} of {len(jobs)} series could not be converted "
                            f"({len(written)} written to {out_dir}):\n  " + "\n  ".join(failures))
    return written


# --------------------------------------------------------------------------------------------- labels
def _is_dicom_seg(path: Path) -> bool:
    if not path.is_file() or path.name.endswith((".nii", ".nii.gz", ".nrrd")):
        return False
    header = read_header(str(path))
    return header is not None and header.modality.upper() == "SEG"


def _image_grid(image: Path, series_uids: set[str]) -> tuple[Any, Any]:
    """(nibabel image, highdicom volume or None) of the image a label must align with."""
    if image.is_file() and image.name.endswith((".nii", ".nii.gz")):
        try:
            return nib.load(image), None
        except Exception as exc:  # noqa: BLE001 - nibabel raises several kinds on foreign files
            raise InputError(f"{image}: not a readable NIfTI image ({exc})") from exc
    groups = [g for g in scan_dicom(image) if g.is_image_volume]
    if series_uids:
        groups = [g for g in groups if g.series_uid in series_uids] or groups
    if len(groups) != 1:
        raise InputError(f"{image}: expected one image series for the label, found {len(groups)} "
                         f"({', '.join(g.name for g in groups)})")
    volume = load_series_volume(groups[0])
    return to_ras_nifti(volume), (volume, groups[0].series_uid)


def labels_to_nifti(label: str | os.PathLike, image: str | os.PathLike, out: str | os.PathLike) -> str:
    """Write ``label`` (DICOM SEG, NIfTI or NRRD) as a uint8 NIfTI aligned voxel for voxel with ``image``.

    ``image`` is the source DICOM series folder or its NIfTI (from ``to_nifti``). A SEG on a DICOM series is
    placed with highdicom (no resampling); other combinations are resampled nearest-neighbour after a check
    that the label lies inside the image.
    """
    label, image = Path(label), Path(image)
    if not image.exists():
        raise InputError(f"{image}: no such image file or folder")
    if _is_dicom_seg(label):
        refs = referenced_series_uids(hd.seg.segread(label))
        img_nii, dicom = _image_grid(image, refs)
        if dicom is not None:
            labels = read_seg_labels(label, dicom[0], dicom[1])
            result = to_ras_nifti(labels, dtype=np.dtype(np.uint8))
        else:
            seg_vol = hd.seg.segread(label).get_volume(combine_segments=True, dtype=np.uint8)
            result = resample_label_to_image(to_ras_nifti(seg_vol, dtype=np.dtype(np.uint8)), img_nii, str(label))
    else:
        img_nii, _ = _image_grid(image, set())
        result = resample_label_to_image(load_label_image(label), img_nii, str(label))
    result = nib.Nifti1Image(np.asarray(result.dataobj).astype(np.uint8), img_nii.affine)
    result.set_qform(img_nii.affine, code=1)
    result.set_sform(img_nii.affine, code=1)
    save_nifti(result, out)
    return str(out)
