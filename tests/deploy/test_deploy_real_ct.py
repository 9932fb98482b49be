"""The real JPEG 2000 abdominal CT from shared data: blank Study/Series/SOP Instance UIDs, no SeriesNumber."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pydicom
import pytest

import deploy_app
from spleenseg.dicom.scan import scan_dicom
from spleenseg.errors import InputError
from testkit.deploy import assert_nothing_written, dciodvfy_errors


@pytest.fixture(scope="module")
def j2k_dir(shared_data: Path) -> Path:
    return shared_data / "real_ct" / "ts_abdomen_ct_dicom_j2k"


def _digest(folder: Path) -> str:
    return hashlib.sha1(b"".join(p.read_bytes() for p in sorted(folder.iterdir()))).hexdigest()


def test_blank_study_uid_is_refused_by_default(j2k_dir, tmp_path, fast_bundle):
    with pytest.raises(InputError, match=r"StudyInstanceUID blank in 20 of 20 file.*--generate-missing-uids"):
        deploy_app.run(j2k_dir, tmp_path / "out", fast_bundle)
    assert_nothing_written(tmp_path / "out")


def test_with_generated_uids_it_writes_a_conformant_seg_on_the_source_slices(j2k_dir, tmp_path, fast_bundle):
    before = _digest(j2k_dir)
    result = deploy_app.run(j2k_dir, tmp_path / "out", fast_bundle, allow_generated_uids=True)
    assert _digest(j2k_dir) == before  # the input is never modified
    seg_path = result.seg_files[0]
    assert dciodvfy_errors(seg_path) == []
    seg = pydicom.dcmread(seg_path)
    sources = [pydicom.dcmread(p) for p in sorted(j2k_dir.iterdir())]
    assert sources[0].file_meta.TransferSyntaxUID == "1.2.840.10008.1.2.4.90"  # JPEG 2000 lossless
    # frames: one per source slice, at the source positions, sorted along the slice normal
    z_sources = sorted(float(ds.ImagePositionPatient[2]) for ds in sources)
    z_frames = [float(f.PlanePositionSequence[0].ImagePositionPatient[2]) for f in seg.PerFrameFunctionalGroupsSequence]
    assert sorted(z_frames) == pytest.approx(z_sources, abs=1e-3)
    assert z_frames in (sorted(z_frames), sorted(z_frames, reverse=True))
    by_uid = {str(ds.file_meta.MediaStorageSOPInstanceUID): ds for ds in sources}
    for frame in seg.PerFrameFunctionalGroupsSequence:  # each frame references the slice at its own position
        source = by_uid[frame.DerivationImageSequence[0].SourceImageSequence[0].ReferencedSOPInstanceUID]
        assert np.allclose(source.ImagePositionPatient, frame.PlanePositionSequence[0].ImagePositionPatient, atol=1e-3)
    xy = {tuple(np.round(np.asarray(ds.ImagePositionPatient[:2], float), 3)) for ds in sources}
    assert {tuple(np.round(np.asarray(f.PlanePositionSequence[0].ImagePositionPatient[:2], float), 3))
            for f in seg.PerFrameFunctionalGroupsSequence} == xy
    # the SOP Instance UIDs come from the file meta; Study/Series UIDs were generated and are reported
    referenced = [i.ReferencedSOPInstanceUID for i in seg.ReferencedSeriesSequence[0].ReferencedInstanceSequence]
    assert set(referenced) == {str(ds.file_meta.MediaStorageSOPInstanceUID) for ds in sources}
    entry = result.report["series"][0]
    assert set(entry["generated_uids"]) == {"StudyInstanceUID", "SeriesInstanceUID"}
    assert seg.StudyInstanceUID == entry["generated_uids"]["StudyInstanceUID"] == entry["study_instance_uid"]
    assert seg.ReferencedSeriesSequence[0].SeriesInstanceUID == entry["generated_uids"]["SeriesInstanceUID"]
    # the same UIDs the data preparation (spleenseg-prepare group/to_nifti) derives for this export
    [group] = scan_dicom(j2k_dir)
    assert (group.study_uid, group.series_uid) == (entry["generated_uids"]["StudyInstanceUID"],
                                                   entry["generated_uids"]["SeriesInstanceUID"])
    assert seg.FrameOfReferenceUID == sources[0].FrameOfReferenceUID
    assert int(seg.Rows) == int(seg.Columns) == 512
