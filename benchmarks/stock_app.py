"""The reference of ``bench_app.py``: the MONAI Deploy SDK's spleen example chain, stock operators only, no STL.

DICOMDataLoader -> DICOMSeriesSelector -> DICOMSeriesToVolume -> MonaiBundleInference (a TorchScript bundle) ->
DICOMSegmentationWriter. Run as ``python benchmarks/stock_app.py INPUT_DIR OUTPUT_DIR MODEL_TS``.
"""

from __future__ import annotations

import sys
from pathlib import Path

from pydicom.sr.codedict import codes
from monai.deploy.conditions import CountCondition
from monai.deploy.core import AppContext, Application, Image
from monai.deploy.core.io_type import IOType
from monai.deploy.operators.dicom_data_loader_operator import DICOMDataLoaderOperator
from monai.deploy.operators.dicom_seg_writer_operator import DICOMSegmentationWriterOperator, SegmentDescription
from monai.deploy.operators.dicom_series_selector_operator import DICOMSeriesSelectorOperator
from monai.deploy.operators.dicom_series_to_volume_operator import DICOMSeriesToVolumeOperator
from monai.deploy.operators.monai_bundle_inference_operator import (
    BundleConfigNames, IOMapping, MonaiBundleInferenceOperator)

#: Any CT series, as the SDK example's rules select it.
RULES = ('{"selections": [{"name": "CT Series", "conditions": {"StudyDescription": "(.*?)", '
         '"Modality": "(?i)CT", "SeriesDescription": "(.*?)"}}]}')


class StockApp(Application):
    """The SDK example's operators, configured, nothing of this project's."""

    def __init__(self, inp: Path, out: Path, model: Path) -> None:
        self.inp, self.out, self.model = inp, out, model
        super().__init__(["stock"])

    def compose(self):
        inp, out, model = self.inp, self.out, self.model
        ctx = AppContext({"input": str(inp), "output": str(out), "model": str(model)})
        loader = DICOMDataLoaderOperator(self, CountCondition(self, 1), input_folder=inp, name="loader")
        selector = DICOMSeriesSelectorOperator(self, rules=RULES, name="selector")
        to_vol = DICOMSeriesToVolumeOperator(self, name="to_vol")
        infer = MonaiBundleInferenceOperator(
            self, input_mapping=[IOMapping("image", Image, IOType.IN_MEMORY)],
            output_mapping=[IOMapping("pred", Image, IOType.IN_MEMORY)], app_context=ctx,
            bundle_config_names=BundleConfigNames(config_names=["inference"]), name="infer")
        desc = [SegmentDescription(segment_label="Spleen", segmented_property_category=codes.SCT.Organ,
                                   segmented_property_type=codes.SCT.Spleen, algorithm_name="spleen",
                                   algorithm_family=codes.DCM.ArtificialIntelligence, algorithm_version="0")]
        writer = DICOMSegmentationWriterOperator(self, segment_descriptions=desc, output_folder=out,
                                                 custom_tags={"SeriesDescription": "AI SEG"}, name="writer")
        self.add_flow(loader, selector, {("dicom_study_list", "dicom_study_list")})
        self.add_flow(selector, to_vol, {("study_selected_series_list", "study_selected_series_list")})
        self.add_flow(to_vol, infer, {("image", "image")})
        self.add_flow(selector, writer, {("study_selected_series_list", "study_selected_series_list")})
        self.add_flow(infer, writer, {("pred", "seg_image")})


def main(argv: list[str]) -> None:
    inp, out, model = (Path(a) for a in argv[:3])
    StockApp(inp, out, model).run()


if __name__ == "__main__":
    main(sys.argv[1:])
