"""Shared pytest fixtures: tiny synthetic CTs (NIfTI, DICOM, MSD cohort) and the shared reference data.

Kept cheap on purpose (a 64x64x32 phantom builds in well under a second) so every area can use them freely.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pytest

from spleenseg.paths import SHARED_DATA
from spleenseg.phantom import Phantom, make_cohort, make_phantom, random_spec, write_dicom_series

#: The seed and grid of the standard tiny phantom; tests may rely on it being portal-venous with a spleen inside.
TINY_SEED = 7
TINY_SHAPE = (64, 64, 32)


@dataclass
class DicomSeries:
    """A CT series on disk: its folder, its files in InstanceNumber order, and the phantom it came from."""

    folder: Path
    paths: list[Path]
    phantom: Phantom


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """Path to ``../shared/data`` (real public CT, conversion and SEG references); fails clearly if absent."""
    if not (SHARED_DATA / "real_ct").is_dir():
        pytest.fail(f"shared reference data not found at {SHARED_DATA} (expected real_ct/ inside); "
                    "it must sit beside the repository checkout as ../shared/data")
    return SHARED_DATA


@pytest.fixture
def tiny_phantom() -> Phantom:
    """A fresh small phantom (64x64x32, portal phase, ~5-6 mm voxels) - mutate it freely."""
    return make_phantom(random_spec(TINY_SEED, shape=TINY_SHAPE, phase="portal"))


@pytest.fixture
def tiny_dicom_series(tmp_path: Path, tiny_phantom: Phantom) -> DicomSeries:
    """The tiny phantom written as a plain axial CT series (signed pixels, IM0001.dcm...) in a temp folder."""
    folder = tmp_path / "ct"
    paths = write_dicom_series(tiny_phantom, folder)
    return DicomSeries(folder=folder, paths=list(paths), phantom=tiny_phantom)  # type: ignore[arg-type]


@pytest.fixture(scope="session")
def tiny_cohort(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A session-wide MSD-style NIfTI dataset: 6 labelled cases of 64^3 (5 training / 1 validation by
    dataset.json) + 1 test case. Treat it as read-only: it is shared by every test in the session."""
    root = tmp_path_factory.mktemp("tiny_cohort") / "Task09_Phantom"
    return make_cohort(root, n_cases=6, seed=0, fmt="nifti", size=(64, 64), val_fraction=0.2, n_test=1,
                       workers=1, progress=False)


# ------------------------------------------------------------------------------------------- test layers
# Markers (registered in pyproject.toml) are applied here, from the fixtures a test uses, the folder it lives in
# and what its function body starts, so that no test has to carry them by hand and a new test lands in the right
# layer by what it does. `make test-fast` deselects slow/orthanc/holoscan/torchrun; `make test` runs everything.
TESTS_DIR = Path(__file__).resolve().parent
#: Session fixtures that train a model (minutes on CPU the first time in a session).
TRAINING_FIXTURES = {"trained_run", "short_run", "trained_bundle"}
#: Fixtures of tests/deploy that hand a bundle to the real app (each use is a Holoscan run of deploy_app).
APP_FIXTURES = {"trained_bundle", "untrained_bundle", "fast_bundle", "nothing_found_bundle", "e2e_run"}
#: Fixtures that start a real node process (``python -m deploy_app.node``: seconds per test).
PROCESS_FIXTURES = {"node_factory"}
#: Text in a test function that starts a ``python -m monai.bundle run`` child (10-20 s each on 2 cores).
BUNDLE_RUN_SIGNS = ("run_bundle(",)
#: Text in a test function that starts a multi-process gloo job.
TORCHRUN_SIGNS = ("torchrun", "torch.distributed.run")
#: Text in a test function that runs the real app as a node pipeline.
APP_PIPELINE_SIGNS = ('"deploy_app:run"',)
#: Test functions (all their parameters together) that took 1 s or more on 2 busy CPU cores and are not caught by
#: a rule above: mostly CLI tests that start a Python child process (2-3 s of imports each), dcm2niix/dcmqi runs
#: and the larger phantom cohorts. Measured with ``pytest -m "not slow and ..." --durations=0``; a test that grows
#: past 1 s belongs here, so that `make test-fast` stays under 2 minutes.
SLOW_TESTS: dict[str, set[str]] = {
    "dataset/test_dataset_build.py": {
        "test_round_trip_dicom_to_bundle_datalist",
    },
    "dataset/test_output_modes.py": {
        "test_dataset_build_follows_the_umask",
        "test_group_and_to_nifti_outputs_follow_the_umask",
    },
    "dataset/test_pseudo_labels.py": {
        "test_cli_names_a_missing_checkpoint_and_exits_2",
        "test_spleen_15_is_added_and_its_mirrored_copy_rejected",
    },
    "deploy/test_bench_measure.py": {
        "test_peak_memory_is_the_child_process_own",
    },
    "deploy/test_fast_postprocessing.py": {
        "test_box_invert_equals_invertd_in_patient_space",
    },
    "deploy/test_map_packaging.py": {
        "test_k8s_job_runs_the_packaged_image_with_its_paths_user_and_resources",
        "test_package_validates_the_config_and_stops_only_at_docker",
    },
    "dicom/test_converter_bad_series.py": {
        "test_one_damaged_series_does_not_stop_the_good_one",
    },
    "dicom/test_converter_hostile_pixels.py": {
        "test_dataset_with_a_broken_label_file_is_one_line",
        "test_each_damaged_series_is_one_line_naming_its_file",
        "test_group_into_an_empty_read_only_folder_is_one_line",
        "test_group_names_text_header_values_once_and_copies_every_series",
        "test_labels_with_a_random_bytes_nrrd_is_one_line",
        "test_malformed_manifest_is_one_line_and_nothing_is_written",
        "test_to_nifti_into_a_read_only_folder_is_one_line",
    },
    "dicom/test_dicom_geometry.py": {
        "test_cli_error_exit_code_and_no_output",
        "test_tilt_resampled_matches_dcm2niix_tilt_correction",
    },
    "dicom/test_dicom_labels.py": {
        "test_dcmqi_liver_seg_gives_exactly_the_nrrd",
    },
    "dicom/test_dicom_scan_group.py": {
        "test_bad_input_folder_clear_error",
        "test_group_layout_manifest_and_untouched_input",
    },
    "dicom/test_dicom_vs_dcm2niix.py": {
        "test_phantom_series_matches_dcm2niix_and_truth",
        "test_real_j2k_ct_blank_uids",
    },
    "dicom/test_hostile_names.py": {
        "test_hostile_header_values_stay_inside_out",
        "test_hostile_manifest_entry_is_one_clear_error",
        "test_malformed_manifest_is_one_clear_error",
        "test_output_in_the_input_folder_is_refused",
    },
    "dicom/test_sharding.py": {
        "test_bad_shard_is_one_line_and_exit_2",
        "test_group_shards_together_equal_one_unsharded_run",
        "test_merge_refuses_missing_mixed_or_overlapping_shards",
        "test_to_nifti_shards_in_parallel_equal_one_unsharded_run",
    },
    "library/test_import_noise.py": {
        "test_importing_monai_after_spleenseg_is_quiet",
    },
    "node/test_node_units.py": {
        "test_a_job_the_disk_has_no_room_for_goes_back_to_queued_and_waits",
        "test_a_study_that_cannot_be_queued_waits_in_incoming_with_growing_delays",
        "test_job_that_failed_sending_can_be_queued_again",
        "test_nothing_to_send_is_done_not_failed_and_not_retried",
        "test_pipeline_failure_is_a_clear_reason",
        "test_pipeline_timeout_kills_the_run",
        "test_status_shows_volume_and_verdict_of_a_finished_job",
    },
    "phantom/test_phantom_cli.py": {
        "test_bad_options_fail_clearly",
        "test_cohort_and_dicom_study_run",
        "test_help_documents_commands_and_options",
        "test_non_empty_output_folder_is_refused",
        "test_unwritable_output_folder",
    },
    "phantom/test_phantom_cohort_determinism.py": {
        "test_cohort_is_deterministic",
    },
    "phantom/test_phantom_dcm2niix_roundtrip.py": {
        "test_dicom_forms_match_nifti",
    },
    "phantom/test_phantom_geometry.py": {
        "test_spleen_volume_range_and_variety",
    },
    "real/test_real_config.py": {
        "test_datalists_oversample_real_and_keep_held_out_apart",
    },
    "real/test_real_dataset.py": {
        "test_cli_refuses_nonempty_output_and_missing_data",
        "test_cross_generator_phantoms_lie_outside_the_training_ranges",
        "test_every_case_on_one_grid_with_spleen_on_the_left",
        "test_realistic_phantoms_include_enhanced_spleens_fatty_livers_and_splenomegaly",
    },
}


def _source(item: pytest.Item) -> str:
    import inspect

    try:
        return inspect.getsource(getattr(item, "function", None) or item.obj)  # type: ignore[attr-defined]
    except (AttributeError, OSError, TypeError):
        return ""


def _layer_markers(item: pytest.Item) -> set[str]:
    try:
        rel = Path(item.path).resolve().relative_to(TESTS_DIR)
    except ValueError:
        rel = Path(item.path).resolve()
    area = rel.parts[0] if not rel.is_absolute() else ""
    fixtures = set(getattr(item, "fixturenames", ()))
    source = _source(item)
    module = getattr(item, "module", None)
    marks = set()
    name = getattr(item, "originalname", item.name)
    if (fixtures & (TRAINING_FIXTURES | PROCESS_FIXTURES) or any(s in source for s in BUNDLE_RUN_SIGNS)
            or name in SLOW_TESTS.get(rel.as_posix(), ())):
        marks.add("slow")
    if "orthanc_factory" in fixtures:
        marks.add("orthanc")
    if (area == "deploy" and fixtures & APP_FIXTURES) or any(s in source for s in APP_PIPELINE_SIGNS):
        marks.add("holoscan")
    if any(s in source for s in TORCHRUN_SIGNS):
        marks.add("torchrun")
    if area == "real" or "shared_data" in fixtures or getattr(module, "SHARED_DATA", None) is not None:
        marks.add("shared_data")
    return marks


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        for name in sorted(_layer_markers(item)):
            item.add_marker(name)
