"""Operators the deploy app needs where the MONAI Deploy App SDK's own are wrong or missing (see each docstring)."""

from deploy_app.operators.loader import CheckedDICOMDataLoaderOperator
from deploy_app.operators.report import SpleenReportOperator
from deploy_app.operators.selector import RankedSeriesSelectorOperator
from deploy_app.operators.seg_writer import SpleenSegWriterOperator
from deploy_app.operators.volume import SeriesToVolumeOperator

__all__ = [
    "CheckedDICOMDataLoaderOperator",
    "RankedSeriesSelectorOperator",
    "SeriesToVolumeOperator",
    "SpleenReportOperator",
    "SpleenSegWriterOperator",
]
