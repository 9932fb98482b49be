"""Pixel decoding: read full datasets and turn "cannot decode" into a message that says what to install.

pydicom decodes compressed transfer syntaxes through plugins (pylibjpeg, pylibjpeg-openjpeg, pylibjpeg-libjpeg,
pylibjpeg-rle or gdcm); when none is installed its error is long and generic. We check first and name the file,
the transfer syntax and the missing packages.
"""

from __future__ import annotations

import os
from typing import Any

import pydicom
from pydicom.pixels import get_decoder
from pydicom.uid import ExplicitVRBigEndian, ExplicitVRLittleEndian, ImplicitVRLittleEndian

from spleenseg.errors import InputError


def check_decodable(ds: pydicom.Dataset, path: str | os.PathLike = "") -> None:
    """Raise :class:`InputError` if no installed plugin can decode this dataset's transfer syntax."""
    meta = getattr(ds, "file_meta", None)
    tsyntax = meta.get("TransferSyntaxUID") if meta is not None else None
    if tsyntax is None or not tsyntax.is_compressed:
        return
    try:
        decoder = get_decoder(tsyntax)
    except NotImplementedError as exc:
        raise InputError(f"{path}: transfer syntax {tsyntax.name} ({tsyntax}) cannot be decoded by pydicom") from exc
    if not decoder.is_available:
        missing = "; ".join(decoder.missing_dependencies) or "a pixel data plugin"
        raise InputError(f"{path}: cannot decode transfer syntax {tsyntax.name}; install {missing}")


def _infer_transfer_syntax(ds: pydicom.Dataset) -> None:
    """A file without the DICOM preamble/file meta (older exports) is uncompressed: record how it was encoded."""
    meta = getattr(ds, "file_meta", None)
    if meta is not None and meta.get("TransferSyntaxUID"):
        return
    implicit, little = getattr(ds, "original_encoding", (True, True))
    if implicit is None:
        implicit, little = True, True
    if meta is None:
        ds.file_meta = meta = pydicom.dataset.FileMetaDataset()
    meta.TransferSyntaxUID = (ImplicitVRLittleEndian if implicit else
                              ExplicitVRLittleEndian if little else ExplicitVRBigEndian)


#: Attributes of which a forced read (no preamble) must hold at least one to count as a DICOM file.
_IDENTIFYING_KEYWORDS = ("SOPClassUID", "SOPInstanceUID", "Modality", "StudyInstanceUID")


def looks_like_dicom(ds: pydicom.Dataset) -> bool:
    """Whether a dataset read with ``force=True`` really is DICOM (forced reads of junk parse "something")."""
    return any(k in ds for k in _IDENTIFYING_KEYWORDS)


def read_file(path: str | os.PathLike, **dcmread_kwargs: Any) -> pydicom.Dataset:
    """Read one DICOM file, also one without the 128-byte preamble and file meta (older exports).

    A file without the ``DICM`` prefix is read again with ``force=True`` and accepted only if it holds
    identifying DICOM attributes (:func:`looks_like_dicom`); its transfer syntax is recorded in a new file meta.
    Raises :class:`InputError` "``path``: not a readable DICOM file (...)" otherwise. Nothing is checked about
    the pixel data: see :func:`read_dataset`.
    """
    try:
        ds = pydicom.dcmread(path, **dcmread_kwargs)
    except pydicom.errors.InvalidDicomError:
        try:
            ds = pydicom.dcmread(path, force=True, **dcmread_kwargs)
        except Exception as exc:  # noqa: BLE001
            raise InputError(f"{path}: not a readable DICOM file ({exc})") from exc
        if not looks_like_dicom(ds):
            raise InputError(f"{path}: not a readable DICOM file (no DICOM preamble and no "
                             f"{'/'.join(_IDENTIFYING_KEYWORDS)})")
    except Exception as exc:  # noqa: BLE001
        raise InputError(f"{path}: not a readable DICOM file ({exc})") from exc
    _infer_transfer_syntax(ds)
    return ds


def read_dataset(path: str | os.PathLike) -> pydicom.Dataset:
    """Read a full dataset (pixels included), with one clear error for unreadable or undecodable files."""
    ds = read_file(path)
    if "PixelData" not in ds and "FloatPixelData" not in ds and "DoubleFloatPixelData" not in ds:
        raise InputError(f"{path}: DICOM file has no pixel data (SOP class {ds.get('SOPClassUID', '?')})")
    check_decodable(ds, path)
    return ds
