"""Download the MSD Task09_Spleen archive with MONAI's ``download_and_extract`` and verify its MD5.

The URL and checksum are MONAI's own (``monai.apps.DecathlonDataset``). Tests and offline sites point ``url``
at a local mirror (an HTTP server inside the site); the checksum is still enforced.
"""

from __future__ import annotations

import logging
import os
import shutil
from pathlib import Path

from spleenseg.atomic import make_temp_dir
from spleenseg.errors import InputError

log = logging.getLogger(__name__)

MSD_SPLEEN_URL = "https://msd-for-monai.s3-us-west-2.amazonaws.com/Task09_Spleen.tar"
MSD_SPLEEN_MD5 = "410d4a301da4e5b2f6f86ec3ddba524e"
TASK = "Task09_Spleen"


def download_msd(out: str | os.PathLike, url: str = MSD_SPLEEN_URL, md5: str = MSD_SPLEEN_MD5,
                 keep_archive: bool = True, progress: bool = True) -> Path:
    """Download (or reuse) ``OUT/Task09_Spleen.tar``, check its MD5 and extract ``OUT/Task09_Spleen/``.

    Extraction happens in a temporary folder that is moved into place only when complete. A wrong checksum
    or an unreachable URL raises :class:`InputError` and leaves nothing behind but a verified archive.
    """
    from monai.apps import download_and_extract  # heavy import: only when downloading

    out = Path(out)
    target = out / TASK
    if (target / "dataset.json").is_file():
        log.info("%s already holds %s; nothing to do", out, TASK)
        return target
    out.mkdir(parents=True, exist_ok=True)
    archive = out / f"{TASK}.tar"
    tmp = make_temp_dir(out, f".{TASK}.partial-")
    try:
        download_and_extract(url, filepath=archive, output_dir=tmp, hash_val=md5, hash_type="md5",
                             progress=progress)
        extracted = tmp / TASK
        if not (extracted / "dataset.json").is_file():
            raise InputError(f"{url}: the archive holds no {TASK}/dataset.json; not the MSD spleen task")
        os.replace(extracted, target)
    except InputError:
        raise
    except Exception as exc:  # noqa: BLE001 - MONAI raises RuntimeError on a bad hash, plain Exception on bad URLs
        archive.unlink(missing_ok=True)  # a partial or corrupt download must not be reused next time
        raise InputError(f"{url}: download or verification failed: {exc}") from exc
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    if not keep_archive:
        archive.unlink(missing_ok=True)
    return target
