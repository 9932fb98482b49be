"""Folder-level jobs behind ``prepare_data.py group`` and ``to_nifti``: layout, manifest, parallel conversion.

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
from typing import Any

import highdicom as hd
import nibabel as nib
import numpy as np
from tqdm import tqdm

from spleenseg import __version__
from spleenseg.atomic import atomic_dir, ensure_writable_dir, make_temp_dir
from spleenseg.dicom.nifti import save_nifti, sidecar_path, to_ras_nifti, volume_to_nifti, write_json
from spleenseg.dicom.scan import SeriesGroup, is_localizer, read_header, scan_dicom
from spleenseg.dicom.seg import load_label_image, read_seg_labels, referenced_series_uids, resample_label_to_image
from spleenseg.dicom.volume import VolumeInfo, load_series_volume
from spleenseg.errors import GeometryError, InputError, SpleensegError
from spleenseg.paths import inside, refuse_output_in_input
from spleenseg.shard import MANIFEST, Shard, check_shard_output

log = logging.getLogger(__name__)


# --------------------------------------------------------------------------------------------- group
def _place(src: str, dst: Path, link: bool) -> None:
    dst.parent.mkdir(parents=True, exist_ok=True)
    if link:
        try:
            os.link(src, dst)  # hard link: survives deleting the input, costs no space
        except OSError:
            os.symlink(os.path.abspath(src), dst)  # other file system
    else:
        shutil.copyfile(src, dst)  # content only: the copy gets the umask's mode, not the input's


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
    manifest = {"created_by": f"spleenseg {__version__} prepare_data.py group", "source": str(in_dir),
                "linked": bool(link), "slices_per_group": slices_per_group}
    if shard is not None:
        groups = _group_shard(groups, out, manifest, shard, link, progress)
    else:
        with atomic_dir(out) as tmp:
            write_json({**manifest, "series": _lay_out(groups, tmp, link, progress)}, tmp / MANIFEST)
    log.info("grouped %d series into %s", len(groups), out)
    return groups


def read_manifest(folder: str | os.PathLike) -> list[SeriesGroup]:
    """Series groups of a ``group`` output, file paths made absolute."""
    folder = Path(folder)
    try:
        data = json.loads((folder / MANIFEST).read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise InputError(f"{folder / MANIFEST}: unreadable manifest ({exc})") from exc
    groups = []
    try:
        for entry in data.get("series", []):
            g = SeriesGroup.from_dict(entry)
            if not g.name or Path(g.name).name != g.name or g.name in (".", ".."):
                raise InputError(f"{folder / MANIFEST}: series name {g.name!r} is not a plain file name")
            g.files = [str(inside(folder, f, f"file entry of {folder / MANIFEST}")) for f in entry["files"]]
            groups.append(g)
    except (AttributeError, KeyError, TypeError) as exc:
        raise InputError(f"{folder / MANIFEST}: malformed manifest ({type(exc).__name__}: {exc})") from exc
    return groups


def safe_uid(uid: str) -> str:
    """A UID as a file-name part: the UID itself when it is a well-formed one (digits and dots, <= 64
    characters), else a deterministic slug plus a hash (a UID is file content and may hold ``/``, ``..``,
    NUL or hundreds of characters)."""
    if re.fullmatch(r"[0-9.]{1,64}", uid) and ".." not in uid:
        return uid
    return f"{re.sub(r'[^A-Za-z0-9]+', '_', uid)[:40].strip('_')}_{hashlib.sha1(uid.encode('utf-8', 'replace')).hexdigest()[:12]}"


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
    volume = load_series_volume(group, resample=resample, info=info)
    path = Path(out_dir) / f"{group.name}.nii.gz"
    volume_to_nifti(volume, path, sidecar=_sidecar(group, info))
    return str(path)


def _convert_job(args: tuple[SeriesGroup, str, bool]) -> tuple[str, str | None, str | None]:
    group, out_dir, resample = args
    try:
        return group.name, convert_group(group, out_dir, resample), None
    except SpleensegError as exc:
        return group.name, None, str(exc)
    except Exception as exc:  # noqa: BLE001 - one damaged series must not stop the others; all are listed
        return group.name, None, f"series {group.name}: {type(exc).__name__}: {exc}"


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
    others are written, :class:`GeometryError` lists every failure (so the command exits non-zero).
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
    positions = list(range(len(todo))) if shard is None else shard.positions(todo)
    written = _convert_all([todo[i] for i in positions], out_dir, resample, workers, progress)
    if shard is not None:  # written last: a shard manifest says every series of the shard is in place
        manifest = {"created_by": f"spleenseg {__version__} prepare_data.py to_nifti", "source": str(in_dir),
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
    """Convert the groups (in parallel with ``workers`` > 1); raises GeometryError listing every failure."""
    jobs = [(g, str(out_dir), resample) for g in todo]
    written, failures = [], []
    bar = tqdm(total=len(jobs), desc="converting series", unit="series", disable=not progress)
    if workers > 1 and len(jobs) > 1:
        with ProcessPoolExecutor(max_workers=workers) as pool:
            futures = [pool.submit(_convert_job, j) for j in jobs]
            results = []
            for fut in as_completed(futures):
                results.append(fut.result())
                bar.update()
    else:
        results = []
        for j in jobs:
            results.append(_convert_job(j))
            bar.update()
    bar.close()
    for name, path, error in sorted(results, key=lambda r: r[0]):
        if error:
            log.error("%s", error)
            failures.append(error)
        else:
            written.append(path)
    if failures:
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
        return nib.load(image), None
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
