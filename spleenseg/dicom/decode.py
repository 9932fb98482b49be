"""Pixel decoding: read full datasets and turn "cannot decode" into a message that says what to install.

pydicom decodes compressed transfer syntaxes through plugins (pylibjpeg, pylibjpeg-openjpeg, pylibjpeg-libjpeg,
pylibjpeg-rle or gdcm); when none is installed its error is long and generic. We check first and name the file,
the transfer syntax and the missing packages.

The pixel header is checked against the data before anything is decoded (:func:`check_pixel_data`): a truncated
file, a BitsAllocated that does not match the stored bytes, or a header declaring an absurd image size would
otherwise end in a generic numpy/pydicom error without the file's name, or in an allocation of many GiB.
"""

from __future__ import annotations

import os
from typing import Any

import pydicom
from pydicom.pixels import get_decoder
from pydicom.pixels.utils import get_expected_length
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


#: Most pixels (Rows x Columns x frames) one file, or one series, may declare: 2**30 pixels are 4 GiB as the
#: float32 volume (a 1024 x 1024 x 1024 CT); a header declaring more is damaged, and is refused before allocating.
MAX_PIXELS = 2 ** 30
#: Image pixel attributes the expected length of the pixel data is computed from.
_PIXEL_KEYWORDS = ("Rows", "Columns", "BitsAllocated", "SamplesPerPixel", "PhotometricInterpretation")


def frame_count(ds: pydicom.Dataset, path: str | os.PathLike = "") -> int:
    """NumberOfFrames (1 when absent or empty); :class:`InputError` when it is not a positive integer."""
    value = ds.get("NumberOfFrames")
    if value in (None, ""):
        return 1
    try:
        frames = int(value)
    except (TypeError, ValueError):
        frames = 0
    if frames < 1:
        raise InputError(f"{path}: NumberOfFrames {str(value)!r} is not a positive integer")
    return frames


def check_size(pixels: int, what: str) -> None:
    """Refuse ``pixels`` above :data:`MAX_PIXELS`; ``what`` names the file or series and its dimensions."""
    if pixels > MAX_PIXELS:
        raise InputError(f"{what} = {pixels:,} pixels, more than the limit of {MAX_PIXELS:,} (4 GiB as float32); "
                         "the header is damaged or this is not a CT series")


def check_pixel_data(ds: pydicom.Dataset, path: str | os.PathLike = "") -> None:
    """Compare the image pixel header with the stored pixel data before decoding; :class:`InputError` if they
    disagree.

    Why before decoding: pydicom then either fails with a generic message that names no file, or (more bytes
    than declared, e.g. BitsAllocated 8 on 16-bit data) returns extra "frames" that break the volume later, and a
    declared 65535 x 65535 image would be allocated before anything fails. Compressed data cannot be measured
    before decoding; its declared size is still limited.
    """
    if "PixelData" not in ds:
        return  # float pixel data: decoded by pydicom with its own checks
    missing = [k for k in _PIXEL_KEYWORDS if ds.get(k) in (None, "")]
    if missing:
        raise InputError(f"{path}: missing {', '.join(missing)}; cannot tell how the pixel data is laid out")
    rows, columns, bits = int(ds.Rows), int(ds.Columns), int(ds.BitsAllocated)
    frames = frame_count(ds, path)
    if rows < 1 or columns < 1:
        raise InputError(f"{path}: Rows {rows} x Columns {columns} is not an image")
    if bits not in (1, 8, 16, 32, 64):
        raise InputError(f"{path}: BitsAllocated {bits} is not 1, 8, 16, 32 or 64")
    layout = f"Rows {rows} x Columns {columns} x {frames} frame(s)"
    check_size(rows * columns * frames, f"{path}: {layout}")
    tsyntax = ds.file_meta.get("TransferSyntaxUID") if getattr(ds, "file_meta", None) is not None else None
    if tsyntax is not None and tsyntax.is_compressed:
        return
    expected = get_expected_length(ds, "bytes")
    actual = len(ds.PixelData)
    layout += f" at BitsAllocated {bits}"
    if actual < expected:
        raise InputError(f"{path}: pixel data is {actual} bytes but {layout} need {expected}; the file is "
                         "truncated or its header does not match the data")
    if actual > expected + 1:  # one byte pads odd lengths
        raise InputError(f"{path}: pixel data is {actual} bytes but {layout} describe {expected}; BitsAllocated, "
                         "Rows, Columns or NumberOfFrames do not match the data")


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
    """Read a full dataset (pixels included), with one clear error for unreadable or undecodable files and for
    pixel data that does not match its header (:func:`check_pixel_data`)."""
    ds = read_file(path)
    if "PixelData" not in ds and "FloatPixelData" not in ds and "DoubleFloatPixelData" not in ds:
        raise InputError(f"{path}: DICOM file has no pixel data (SOP class {ds.get('SOPClassUID', '?')})")
    check_decodable(ds, path)
    check_pixel_data(ds, path)
    return ds
