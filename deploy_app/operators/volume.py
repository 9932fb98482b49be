"""Series → volume operator that validates geometry and hands series to the pipeline one at a time.

Why not the SDK's ``DICOMSeriesToVolumeOperator``: it converts only the first selected series; it never checks
slice spacing, so a series with a missing slice becomes a silently distorted volume; it swaps the two in-plane
spacings in its affine; it keeps scouts stored inside the series; and it stores the volume as (slice, row,
column), which the SDK's bundle operator transposes with an affine built from those same first/last slices.
Here geometry comes from highdicom (:mod:`deploy_app.volume_io`) and the image handed to the bundle operator is
already in MONAI's (column, row, slice) order with its RAS affine, which that operator passes through unchanged.

Each tick emits one series' image (to the bundle operator) and its :class:`~deploy_app.handoff.SeriesVolume`
(to the SEG writer: the volume's grid, its instances in slice order, which is the SEG's frame order, and the UIDs the
loader generated), so "segment all matching series" flows through the same SDK inference operator one series at
a time. The SDK's series objects are left as the loader and selector made them.
"""

from __future__ import annotations

import logging

import numpy as np

from monai.deploy.conditions import BooleanCondition
from monai.deploy.core import ConditionType, Fragment, Image, OperatorSpec
from monai.deploy.core.domain.dicom_series_selection import SelectedSeries, StudySelectedSeries
from monai.deploy.operators.dicom_series_to_volume_operator import DICOMSeriesToVolumeOperator
from deploy_app.handoff import GENERATED_UIDS, SERIES_VOLUME, SeriesVolume
from deploy_app.volume_io import monai_array_and_affine, sort_and_load

log = logging.getLogger(__name__)


class SeriesToVolumeOperator(DICOMSeriesToVolumeOperator):
    """Emits (image, SeriesVolume) per selected series; stops itself when all are sent."""

    def __init__(self, fragment: Fragment, *args, **kwargs) -> None:
        self._pending: list[StudySelectedSeries] = []
        self._received = False
        self._generated: dict[str, str] = {}
        self._more = BooleanCondition(fragment, enable_tick=True, name="volume_has_more")
        super().__init__(fragment, self._more, *args, **kwargs)

    def setup(self, spec: OperatorSpec):
        spec.input(self.input_name_series).condition(ConditionType.NONE)
        spec.input(GENERATED_UIDS).condition(ConditionType.NONE)
        spec.output(self.output_name_image)
        spec.output(SERIES_VOLUME)

    def compute(self, op_input, op_output, context):
        generated = op_input.receive(GENERATED_UIDS)  # sent by the loader before the selector sends the series
        if generated:
            self._generated.update(generated)
        received = op_input.receive(self.input_name_series)
        if received:
            self._received = True
            for study_selected in received:
                for selected in study_selected.selected_series:
                    one = StudySelectedSeries(study_selected.study)
                    one.add_selected_series(selected)
                    self._pending.append(one)
        if self._pending:
            image, series_volume = self.convert_one(self._pending.pop(0))
            op_output.emit(image, self.output_name_image)
            op_output.emit(series_volume, SERIES_VOLUME)
        if self._received and not self._pending:
            self._more.disable_tick()

    def convert_one(self, study_selected: StudySelectedSeries) -> tuple[Image, SeriesVolume]:
        """The bundle's input image and the hand-off for the SEG writer, for the (single) selected series."""
        selected: SelectedSeries = study_selected.selected_series[0]
        series = selected.series
        volume, ordered = sort_and_load([s.get_native_sop_instance() for s in series.get_sop_instances()],
                                        str(series.SeriesInstanceUID))
        array, affine_ras = monai_array_and_affine(volume)
        spacing = np.sqrt((affine_ras[:3, :3] ** 2).sum(axis=0))
        metadata = self._get_instance_properties(series)
        metadata.update(self._get_instance_properties(study_selected.study))
        metadata.update({
            "affine": affine_ras, "original_affine": affine_ras.copy(), "spacing": spacing,
            "spatial_shape": np.asarray(array.shape), "original_channel_dim": "no_channel", "space": "RAS",
            "selection_name": selected.selection_name,
        })
        log.info("series %s: volume %s voxels (column, row, slice), spacing %s mm",
                 series.SeriesInstanceUID, array.shape, np.round(spacing, 4).tolist())
        uids = {str(ordered[0].StudyInstanceUID), str(series.SeriesInstanceUID)}
        generated = {keyword: uid for uid, keyword in self._generated.items() if uid in uids}
        return Image(array, metadata), SeriesVolume(geometry=volume.get_geometry(), sources=tuple(ordered),
                                                    selection=str(selected.selection_name or ""),
                                                    generated_uids=generated)
