"""End to end through the real Holoscan executor: series choice, SEG conformance and geometry, report, extras."""

from __future__ import annotations

import logging
import os
import stat
import subprocess
import sys
from pathlib import Path

import highdicom as hd
import nibabel as nib
import numpy as np
import pydicom
import pytest
from pydicom.sr.codedict import codes

from testkit.deploy import dciodvfy_errors, dice, label_at_frames, seg_frames

VENV_BIN = Path(sys.executable).parent
LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0, 1.0])


def _series_uid(paths) -> str:
    return str(pydicom.dcmread(paths[0], stop_before_pixels=True).SeriesInstanceUID)


def _entry(result, ct_paths) -> dict:
    uid = _series_uid(ct_paths)
    return next(e for e in result.report["series"] if e["series_instance_uid"] == uid)


def nifti_slice_for(nifti: nib.Nifti1Image, ipp_lps) -> int:
    """Index k of the NIfTI slice through a source image position (must be a whole voxel)."""
    ijk = np.linalg.inv(nifti.affine) @ np.append(LPS_TO_RAS[:3, :3] @ np.asarray(ipp_lps, float), 1.0)
    assert np.allclose(ijk[:3], np.rint(ijk[:3]), atol=1e-3) and np.allclose(ijk[:2], 0, atol=1e-3)
    return int(round(ijk[2]))


def test_best_series_of_each_study_is_segmented(e2e_result, phantom_study):
    taken = {e["series_instance_uid"] for e in e2e_result.report["series"]}
    assert taken == {_series_uid(phantom_study["a_thin"]), _series_uid(phantom_study["b_ct"])}
    assert len(e2e_result.seg_files) == 2 and all(p.is_file() for p in e2e_result.seg_files)
    assert not [p for p in e2e_result.output_dir.parent.iterdir() if ".partial-" in p.name]


@pytest.mark.parametrize("patient", ["a", "b"])
def test_seg_is_conformant_and_covers_the_phantom_spleen(e2e_result, phantom_study, patient):
    ct = phantom_study["a_thin" if patient == "a" else "b_ct"]
    entry = _entry(e2e_result, ct)
    path = e2e_result.output_dir / entry["seg_file"]
    assert dciodvfy_errors(path) == []
    seg = pydicom.dcmread(path)
    sources = [pydicom.dcmread(p, stop_before_pixels=True) for p in ct]
    # one frame per source slice, each exactly at a source slice position; every source instance referenced
    assert int(seg.NumberOfFrames) == len(sources)
    source_positions = {tuple(np.round(np.asarray(ds.ImagePositionPatient, float), 3)) for ds in sources}
    frame_positions = [tuple(np.round(np.asarray(f.PlanePositionSequence[0].ImagePositionPatient, float), 3))
                       for f in seg.PerFrameFunctionalGroupsSequence]
    assert set(frame_positions) == source_positions and len(set(frame_positions)) == len(sources)
    along_normal = np.diff([p[2] for p in frame_positions])  # axial series: the normal is the z axis
    assert np.all(along_normal > 0) or np.all(along_normal < 0)
    for frame in seg.PerFrameFunctionalGroupsSequence:  # each frame references the source at its position
        uid = frame.DerivationImageSequence[0].SourceImageSequence[0].ReferencedSOPInstanceUID
        source = next(ds for ds in sources if ds.SOPInstanceUID == uid)
        assert np.allclose(source.ImagePositionPatient, frame.PlanePositionSequence[0].ImagePositionPatient, atol=1e-3)
    referenced = {i.ReferencedSOPInstanceUID for i in seg.ReferencedSeriesSequence[0].ReferencedInstanceSequence}
    assert referenced == {str(ds.SOPInstanceUID) for ds in sources}
    assert seg.StudyInstanceUID == sources[0].StudyInstanceUID
    assert seg.FrameOfReferenceUID == sources[0].FrameOfReferenceUID
    assert "not for clinical use" in seg.SeriesDescription
    segment = seg.SegmentSequence[0]
    assert (segment.SegmentLabel, segment.SegmentAlgorithmType) == ("Spleen", "AUTOMATIC")
    assert segment.SegmentedPropertyCategoryCodeSequence[0].CodeValue == codes.SCT.Organ.value == "91772007"
    assert segment.SegmentedPropertyTypeCodeSequence[0].CodeValue == codes.SCT.Spleen.value == "78961009"
    model = e2e_result.report["model"]
    assert segment.SegmentAlgorithmName == model["name"]
    assert segment.SegmentationAlgorithmIdentificationSequence[0].AlgorithmVersion == model["version"]
    # in patient coordinates the mask covers the phantom's spleen (on the patient's left: LPS x > 0)
    frames = seg_frames(seg)
    assert dice(frames, label_at_frames(phantom_study[patient], seg)) >= 0.8
    assert entry["bbox_lps_mm"]["min"][0] > 0


def test_seg_reads_back_with_highdicom_and_dcmqi_as_the_predicted_mask(e2e_result, phantom_study, tmp_path):
    entry = _entry(e2e_result, phantom_study["b_ct"])
    prediction = nib.load(e2e_result.output_dir / entry["nifti_file"])
    # header as the project's own NIfTI files (spleenseg.dicom.nifti.to_ras_nifti): scanner coordinates, mm
    assert (int(prediction.header["qform_code"]), int(prediction.header["sform_code"])) == (1, 1)
    assert prediction.header.get_xyzt_units()[0] == "mm" and prediction.get_data_dtype() == np.uint8
    np.testing.assert_allclose(prediction.get_qform(), prediction.affine, atol=1e-4)
    predicted = np.asarray(prediction.dataobj) > 0
    assert predicted.sum() == entry["spleen_voxels"] > 0
    # highdicom: frames looked up by source instance
    sources = [pydicom.dcmread(p, stop_before_pixels=True) for p in phantom_study["b_ct"]]
    seg = hd.seg.segread(e2e_result.output_dir / entry["seg_file"])
    by_source = seg.get_pixels_by_source_instance([str(ds.SOPInstanceUID) for ds in sources], segment_numbers=[1])
    for ds, frame in zip(sources, by_source[..., 0]):
        k = nifti_slice_for(prediction, ds.ImagePositionPatient)
        np.testing.assert_array_equal(frame > 0, predicted[:, :, k].T)
    # dcmqi: its own reconstruction, compared voxel by voxel in world coordinates
    subprocess.run([str(VENV_BIN / "segimage2itkimage"), "--inputDICOM", str(e2e_result.output_dir / entry["seg_file"]),
                    "--outputDirectory", str(tmp_path), "-t", "nifti"], check=True, capture_output=True)
    dcmqi = nib.load(next(tmp_path.glob("*.nii*")))
    dcmqi_mask = np.asarray(dcmqi.dataobj) > 0
    ijk = np.argwhere(dcmqi_mask)
    world = nib.affines.apply_affine(dcmqi.affine, ijk)
    ours = nib.affines.apply_affine(np.linalg.inv(prediction.affine), world)
    assert np.allclose(ours, np.rint(ours), atol=1e-3)
    assert dcmqi_mask.sum() == predicted.sum()
    idx = np.rint(ours).astype(int)
    assert predicted[idx[:, 0], idx[:, 1], idx[:, 2]].all()


def test_outputs_have_the_umask_modes(e2e_result):
    """SEG, NIfTI, STL and report come out with the modes the umask gives (not mkstemp's private 0600)."""
    mask = os.umask(0)
    os.umask(mask)
    out = e2e_result.output_dir
    modes = {p: stat.S_IMODE(p.stat().st_mode) for p in [out, *out.rglob("*")]}
    wrong = {str(p): oct(m) for p, m in modes.items() if m != ((0o777 if p.is_dir() else 0o666) & ~mask)}
    assert len(modes) > 3 and not wrong, wrong


def test_report_matches_the_mask(e2e_result, phantom_study):
    entry = _entry(e2e_result, phantom_study["a_thin"])
    mask = np.asarray(nib.load(e2e_result.output_dir / entry["nifti_file"]).dataobj) > 0
    voxel_ml = 3.0 * 3.0 * 4.0 / 1000.0
    assert entry["spleen_volume_ml"] == pytest.approx(mask.sum() * voxel_ml, abs=1e-3)
    slices = np.flatnonzero(mask.any(axis=(0, 1)))
    assert entry["slices_with_spleen"] == len(slices) == len(entry["instance_numbers_with_spleen"])
    assert entry["craniocaudal_length_mm"] == pytest.approx((slices.max() - slices.min() + 1) * 4.0)
    truth_ml = phantom_study["a"].spleen_ml
    assert abs(entry["spleen_volume_ml"] - truth_ml) < 0.25 * truth_ml
    # the bounding box in patient coordinates (LPS mm) is the true spleen's, to within a voxel or two
    phantom = phantom_study["a"]
    ijk = np.argwhere(phantom.label > 0)
    true_lps = ijk @ phantom.affine_lps[:3, :3].T + phantom.affine_lps[:3, 3]
    two_voxels = 2 * np.abs(phantom.affine_lps[:3, :3]).sum(axis=1)  # per world axis (x, y, z)
    assert np.all(np.abs(np.asarray(entry["bbox_lps_mm"]["min"]) - true_lps.min(0)) <= two_voxels)
    assert np.all(np.abs(np.asarray(entry["bbox_lps_mm"]["max"]) - true_lps.max(0)) <= two_voxels)
    report = e2e_result.report
    assert report["model"]["name"] and report["run_time_s"] > 0
    assert entry["seg_series_instance_uid"] and entry["study_instance_uid"]


def test_stl_surface_lies_on_the_spleen(e2e_result, phantom_study):
    from stl import mesh

    entry = _entry(e2e_result, phantom_study["a_thin"])
    surface = mesh.Mesh.from_file(str(e2e_result.output_dir / entry["stl_file"]))
    points = surface.vectors.reshape(-1, 3)
    low, high = np.asarray(entry["bbox_lps_mm"]["min"]), np.asarray(entry["bbox_lps_mm"]["max"])
    assert len(points) > 100
    assert np.all(points >= low - 4.1) and np.all(points <= high + 4.1)  # within one voxel of the bbox (LPS)


def test_all_series_option_segments_every_matching_series(tmp_path, phantom_study, untrained_bundle):
    import deploy_app

    result = deploy_app.run(phantom_study["folder"], tmp_path / "out", untrained_bundle, all_series=True)
    taken = {e["series_instance_uid"]: e["slices"] for e in result.report["series"]}
    assert taken == {_series_uid(phantom_study["a_thin"]): 24, _series_uid(phantom_study["a_thick"]): 12,
                     _series_uid(phantom_study["b_ct"]): 24}
    assert len(list((tmp_path / "out").glob("SEG_*.dcm"))) == 3


def test_scout_stored_inside_the_ct_series_is_left_out(tmp_path, small_series, untrained_bundle, caplog):
    import logging

    import deploy_app
    from spleenseg.phantom import write_scout
    from testkit.deploy import PATIENT_B_SEED, cropped_phantom

    scout_path = write_scout(cropped_phantom(PATIENT_B_SEED), tmp_path / "scout")
    scout = pydicom.dcmread(scout_path)
    scout.SeriesInstanceUID = _series_uid(small_series)  # as some scanners do
    scout.save_as(tmp_path / "in" / "A_SCOUT.dcm")  # listed first
    with caplog.at_level(logging.WARNING):
        result = deploy_app.run(tmp_path / "in", tmp_path / "out", untrained_bundle)
    seg = pydicom.dcmread(result.seg_files[0])
    assert int(seg.NumberOfFrames) == len(small_series) == 24
    assert scout.SOPInstanceUID not in {
        i.ReferencedSOPInstanceUID for i in seg.ReferencedSeriesSequence[0].ReferencedInstanceSequence}
    assert any("LOCALIZER" in r.getMessage() for r in caplog.records)


def test_feet_first_series_still_lands_on_the_spleen(tmp_path, phantom_study, trained_bundle):
    """Feet-first (ImageOrientationPatient -1,0,0,...) flips rows and slice order: a mirrored or shifted path
    from DICOM to the model and back to the SEG would miss the spleen in patient coordinates."""
    import deploy_app
    from spleenseg.phantom import write_dicom_series

    ct = write_dicom_series(phantom_study["a"], tmp_path / "in", feet_first=True, shuffle_names=True)
    assert float(pydicom.dcmread(ct[0], stop_before_pixels=True).ImageOrientationPatient[0]) == -1.0
    result = deploy_app.run(tmp_path / "in", tmp_path / "out", trained_bundle)
    seg = pydicom.dcmread(result.seg_files[0])
    assert dciodvfy_errors(result.seg_files[0]) == []
    assert dice(seg_frames(seg), label_at_frames(phantom_study["a"], seg)) >= 0.8


QA_FLAGS = {"no_spleen", "implausible_volume", "several_candidates", "candidate_right", "fov_cut",
            "low_confidence", "header_mirrored", "anatomy_unsure"}


@pytest.mark.parametrize("patient", ["a", "b"])
def test_report_has_the_qa_block_and_logs_the_verdict(e2e_result, e2e_log, phantom_study, patient):
    entry = _entry(e2e_result, phantom_study["a_thin" if patient == "a" else "b_ct"])
    qa, uid = entry["qa"], entry["series_instance_uid"]
    assert set(qa["flags"]) == QA_FLAGS and all(isinstance(v, bool) for v in qa["flags"].values())
    assert isinstance(qa["verdict"], str) and qa["verdict"] and "\n" not in qa["verdict"]
    raised = [name for name, value in qa["flags"].items() if value]
    assert len(qa["messages"]) == len(raised)
    # the phantom's spleen is found, on the patient's left, and the header is not judged mirrored
    assert not qa["flags"]["no_spleen"] and not qa["flags"]["candidate_right"]
    assert not qa["flags"]["header_mirrored"] and entry["spleen_side"] == "left" and entry["seg_file"]
    logged = [(r.levelno, r.getMessage()) for r in e2e_log if uid in r.getMessage()]
    assert [m for _, m in logged if "QA verdict" in m] and all(
        m.startswith(f"series {uid}: QA verdict: {qa['verdict']}") for _, m in logged if "QA verdict" in m)
    for flag in raised:
        assert (logging.WARNING, f"series {uid}: QA flag {flag} raised") in logged
    assert not [m for _, m in logged if "mirrored" in m]


def test_demo_summary_prints_each_verdict_and_raised_flag(e2e_result, capsys):
    from spleenseg.demo import _summarise_report

    _summarise_report(e2e_result.output_dir)
    printed = capsys.readouterr().out
    for entry in e2e_result.report["series"]:
        raised = [name for name, value in entry["qa"]["flags"].items() if value]
        assert f"series {entry['series_instance_uid']}: spleen {entry['spleen_volume_ml']:.1f} mL" in printed
        assert f"QA: {entry['qa']['verdict']}; flags raised: {', '.join(raised) or 'none'}" in printed
    assert "no SEG written" not in printed


def test_no_spleen_found_writes_no_seg_lists_the_series_and_exits_3(tmp_path, small_series, nothing_found_bundle,
                                                                    capsys):
    """A model that finds nothing: python -m deploy_app exits 3, OUT_DIR holds only the report (no SEG, no empty
    NIfTI or STL, no staging folder), the report lists the series with no_spleen, and a WARNING names it."""
    from spleenseg.demo import _summarise_report

    out = tmp_path / "out"
    proc = subprocess.run([sys.executable, "-m", "deploy_app", "-i", str(tmp_path / "in"), "-o", str(out), "-m",
                           str(nothing_found_bundle), "--nifti", "--stl"], capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 3, proc.stderr[-3000:]
    assert [p.name for p in out.iterdir()] == ["spleen_report.json"]
    assert proc.stdout.split() == [str(out / "spleen_report.json")]
    assert not [p for p in tmp_path.iterdir() if ".partial-" in p.name]
    import json

    [entry] = json.loads((out / "spleen_report.json").read_text())["series"]
    uid = _series_uid(small_series)
    assert entry["series_instance_uid"] == uid and entry["seg_file"] is None
    assert entry["spleen_voxels"] == 0 and entry["spleen_volume_ml"] == 0 and entry["spleen_side"] == "empty"
    assert entry["qa"]["flags"]["no_spleen"] is True and entry["qa"]["verdict"] == "no spleen found"
    assert "nifti_file" not in entry and "stl_file" not in entry
    assert f"WARNING deploy_app.operators.seg_writer: series {uid}: no spleen found; no SEG written" in proc.stderr
    assert f"WARNING deploy_app.qa: series {uid}: QA flag no_spleen raised" in proc.stderr
    _summarise_report(out)
    printed = capsys.readouterr().out
    assert "no SEG written" in printed and "QA: no spleen found; flags raised: no_spleen" in printed
