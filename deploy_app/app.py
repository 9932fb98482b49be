"""The MONAI Deploy application: DICOM CT in, DICOM SEG (+ spleen_report.json) out.

Pipeline (SDK operators, subclassed only where the SDK's is wrong or missing, see ``operators/``; the bundle's
``inference`` graph runs unchanged in the SDK's own ``MonaiBundleInferenceOperator``)::

    loader -> selector -> to_volume -> bundle inference -> SEG writer -> report
       \\__ generated UIDs __/     \\____ SeriesVolume _____/            (SegResult)

The bundle has two outputs: the mask ("pred") and the QA dict of its component selection ("spleen_qa"); both
go to the SEG writer, which skips the SEG when no spleen was found and hands the dict on to the report.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from monai.deploy.conditions import CountCondition
from monai.deploy.core import AppContext, Application, Image
from monai.deploy.core.io_type import IOType
from monai.deploy.operators.monai_bundle_inference_operator import (
    BundleConfigNames,
    IOMapping,
    MonaiBundleInferenceOperator,
)

from deploy_app.bundle_info import config_names, prepare_model
from deploy_app.handoff import GENERATED_UIDS, SEG_RESULT, SERIES_VOLUME
from deploy_app.operators import (
    CheckedDICOMDataLoaderOperator,
    RankedSeriesSelectorOperator,
    SeriesToVolumeOperator,
    SpleenReportOperator,
    SpleenSegWriterOperator,
)
from deploy_app.operators.seg_writer import AlgorithmInfo
from deploy_app.qa import QA_OUTPUT


@dataclass
class AppOptions:
    """Everything one run needs; ``output_dir`` is where the operators write (run() passes a temp folder).

    ``model`` is the bundle's name and version (:func:`deploy_app.bundle_info.model_identity`), read once by
    run() when it checks the model path.
    """

    input_dir: Path
    output_dir: Path
    model_path: Path
    model: dict[str, str]
    rules_path: Path | None = None
    all_series: bool = False
    stl: bool = False
    nifti: bool = False
    allow_generated_uids: bool = False


class SpleenSegApp(Application):
    """Segments the spleen in the best axial CT series of each study (or every matching series)."""

    def __init__(self, options: AppOptions) -> None:
        self.app_options = options
        super().__init__(["deploy_app"])

    def compose(self):
        o = self.app_options
        context = AppContext({"input": str(o.input_dir), "output": str(o.output_dir), "model": str(o.model_path)})
        prepare_model(context.models, o.model_path)

        loader = CheckedDICOMDataLoaderOperator(self, CountCondition(self, 1), input_folder=o.input_dir,
                                                allow_generated_uids=o.allow_generated_uids, name="loader")
        selector = RankedSeriesSelectorOperator(self, rules_path=o.rules_path, all_matched=o.all_series,
                                                name="selector")
        to_volume = SeriesToVolumeOperator(self, name="to_volume")
        inference = MonaiBundleInferenceOperator(
            self, app_context=context, bundle_config_names=BundleConfigNames(config_names=config_names(o.model_path)),
            input_mapping=[IOMapping("image", Image, IOType.IN_MEMORY)],
            output_mapping=[IOMapping("pred", Image, IOType.IN_MEMORY),
                            IOMapping(QA_OUTPUT, np.ndarray, IOType.IN_MEMORY)], name="inference")
        writer = SpleenSegWriterOperator(self, output_folder=o.output_dir, name="seg_writer",
                                         algorithm=AlgorithmInfo(o.model["name"], o.model["version"]))
        report = SpleenReportOperator(self, output_folder=o.output_dir, model=o.model, stl=o.stl, nifti=o.nifti,
                                      name="report")

        self.add_flow(loader, selector, {("dicom_study_list", "dicom_study_list")})
        self.add_flow(loader, to_volume, {(GENERATED_UIDS, GENERATED_UIDS)})
        self.add_flow(selector, to_volume, {("study_selected_series_list", "study_selected_series_list")})
        self.add_flow(to_volume, inference, {("image", "image")})
        self.add_flow(to_volume, writer, {(SERIES_VOLUME, SERIES_VOLUME)})
        self.add_flow(inference, writer, {("pred", "seg_image"), (QA_OUTPUT, QA_OUTPUT)})
        self.add_flow(writer, report, {(SEG_RESULT, SEG_RESULT)})
