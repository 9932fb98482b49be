"""Series selector with a minimum slice count, a best-match ranking and a logged reason for every series.

Why not the SDK's ``DICOMSeriesSelectorOperator`` as is: it takes the *first* series that matches (in file
order), so a scout or a thick reconstruction can win; it has no "enough slices" rule; matching ImageType by
substring of the list's text makes "!LOCALIZER" fragile; its "Axial" rule raises NotImplementedError when
PatientPosition is absent; and it logs matching attribute by attribute but never says in one line why a series
was skipped. The rules keep the SDK's JSON shape (``selections`` / ``name`` / ``conditions``), plus
``min_slices`` per selection.
"""

from __future__ import annotations

import json
import logging
import math
import re
from pathlib import Path
from typing import Any

import numpy as np

from highdicom.spatial import get_closest_patient_orientation, get_normal_vector
from monai.deploy.core import Fragment
from monai.deploy.core.domain.dicom_series import DICOMSeries
from monai.deploy.core.domain.dicom_series_selection import SelectedSeries, StudySelectedSeries
from monai.deploy.operators.dicom_series_selector_operator import DICOMSeriesSelectorOperator
from spleenseg.dicom.scan import is_localizer
from spleenseg.errors import InputError

log = logging.getLogger(__name__)

#: The rules shipped with the app.
DEFAULT_RULES_PATH = Path(__file__).resolve().parent.parent / "series_rules.json"


def load_rules(path: str | Path | None = None) -> dict[str, Any]:
    """Read and check a rules file (default: the shipped ``series_rules.json``)."""
    path = Path(path) if path else DEFAULT_RULES_PATH
    try:
        rules = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise InputError(f"{path}: cannot read series selection rules ({exc})") from exc
    selections = rules.get("selections") if isinstance(rules, dict) else None
    if not selections or not all(isinstance(s, dict) and isinstance(s.get("conditions"), dict) for s in selections):
        raise InputError(f'{path}: rules need a non-empty "selections" list, each with a "conditions" object')
    return rules


#: The plane named by the patient direction (highdicom's biped letters) closest to the slice normal.
PLANE_OF_NORMAL = {"L": "Sagittal", "R": "Sagittal", "A": "Coronal", "P": "Coronal", "H": "Axial", "F": "Axial"}


def orientation_name(iop: Any) -> str:
    """Axial, Coronal or Sagittal: the patient axis the slice normal is closest to."""
    values = [float(v) for v in iop]
    directions = np.column_stack([values[:3], values[3:], get_normal_vector(values)])
    return PLANE_OF_NORMAL[get_closest_patient_orientation(directions)[2].value]


def slice_thickness(ds: Any) -> float:
    """SliceThickness in mm, or ``inf`` (unknown, ranked after every known thickness) when it is absent or not
    one finite positive number.

    Why: the value only breaks ties between series with the same slice count, and damaged exports hold text
    ("abc", a decimal comma "1,5") or several values there; such a series is still usable, so the value is
    ignored rather than stopping the run.
    """
    try:
        value = float(ds.get("SliceThickness") or math.inf)
    except (TypeError, ValueError):  # text, or a multi-valued element
        return math.inf
    return value if math.isfinite(value) and value > 0 else math.inf


def _values(value: Any) -> list[str]:
    if value is None:
        return []
    if isinstance(value, (list, tuple)) or type(value).__name__ == "MultiValue":
        return [str(v).strip().upper() for v in value]
    return [str(value).strip().upper()]


class RankedSeriesSelectorOperator(DICOMSeriesSelectorOperator):
    """Selects, per study, the best series matching the rules (or all matches) and logs why for each series."""

    def __init__(self, fragment: Fragment, *args, rules_path: str | Path | None = None, all_matched: bool = False,
                 **kwargs) -> None:
        self._rules = load_rules(rules_path)
        super().__init__(fragment, *args, rules=json.dumps(self._rules), all_matched=all_matched, **kwargs)

    def compute(self, op_input, op_output, context):
        studies = op_input.receive(self.input_name_study_list)
        selected = self.filter(self._rules, studies, self._all_matched)
        op_output.emit(selected, self.output_name_selected_series)

    def filter(self, selection_rules, dicom_study_list, all_matched: bool = False,
               sort_by_sop_instance_count: bool = False) -> list[StudySelectedSeries]:
        """Keep, per study, the best match (or every match); raise :class:`InputError` when nothing matches."""
        result = []
        for study in dicom_study_list:
            matches: list[tuple[tuple, str, DICOMSeries]] = []
            for series in study.get_all_series():
                for selection in selection_rules["selections"]:
                    reason = self.why_not(selection, series)
                    label = self._label(series)
                    if reason:
                        log.info("series %s: skipped by rule %r: %s", label, selection.get("name", ""), reason)
                        continue
                    matches.append((self._rank(series), selection.get("name", ""), series))
                    break
            if not matches:
                continue
            matches.sort(key=lambda m: m[0])
            chosen = matches if all_matched else matches[:1]
            study_selected = StudySelectedSeries(study)
            for _, name, series in chosen:
                log.info("series %s: TAKEN (rule %r)", self._label(series), name)
                study_selected.add_selected_series(SelectedSeries(name, series, None))
            for _, _, series in matches[len(chosen):]:
                log.info("series %s: matches, but skipped for a better one (more slices / thinner)",
                         self._label(series))
            result.append(study_selected)
        if not result:
            n = sum(len(s.get_all_series()) for s in dicom_study_list)
            names = [s.get("name") for s in selection_rules["selections"]]
            raise InputError(f"no series matches the selection rules among {n} series "
                             f"(see the log for each series' reason); rules: {names}")
        return result

    @staticmethod
    def _label(series: DICOMSeries) -> str:
        first = series.get_sop_instances()[0].get_native_sop_instance()
        return (f"{series.SeriesInstanceUID} (#{first.get('SeriesNumber', '?')} "
                f"'{first.get('SeriesDescription', '')}', {len(series.get_sop_instances())} images)")

    @staticmethod
    def _rank(series: DICOMSeries) -> tuple:
        """Sort key: most slices, then thinnest spacing, then lowest series number, then UID (deterministic)."""
        datasets = RankedSeriesSelectorOperator._images(series)
        thickness = min((slice_thickness(ds) for ds in datasets), default=math.inf)
        number = datasets[0].get("SeriesNumber")
        return (-len(datasets), thickness, int(number) if number not in (None, "") else 1 << 30,
                str(series.SeriesInstanceUID))

    @staticmethod
    def _images(series: DICOMSeries) -> list:
        """The series' datasets without localizers (some scanners store the scout inside the CT series)."""
        datasets = [s.get_native_sop_instance() for s in series.get_sop_instances()]
        images = [ds for ds in datasets if not is_localizer(ds)]
        return images or datasets

    def why_not(self, selection: dict[str, Any], series: DICOMSeries) -> str:
        """Empty string if ``series`` satisfies ``selection``, else the first failed condition in words."""
        instances = self._images(series)
        first = instances[0]
        for key, wanted in selection["conditions"].items():
            if wanted in (None, "", []):
                continue
            value = first.get(key, None)
            if key == "ImageOrientationPatient":
                if not value:
                    return "no ImageOrientationPatient"
                actual = orientation_name(value)
                if actual.lower() != str(wanted).lower():
                    return f"orientation is {actual}, rule wants {wanted}"
            elif isinstance(wanted, list) and not all(isinstance(w, (int, float)) for w in wanted[:1]):
                have = _values(value)
                for term in (str(w).upper() for w in wanted):
                    if term.startswith("!") and term[1:] in have:
                        return f"{key} {have} contains {term[1:]}"
                    if not term.startswith("!") and term not in have:
                        return f"{key} {have} lacks {term}"
            elif value in (None, ""):
                return f"{key} is missing"
            elif isinstance(value, (int, float)) or type(value).__name__ in ("DSfloat", "IS"):
                if not self._match_numeric_condition(wanted, float(value)):
                    return f"{key} {value} does not satisfy {wanted}"
            elif not re.search(str(wanted), str(value), re.IGNORECASE):
                return f"{key} {str(value)!r} does not match {wanted!r}"
        minimum = int(selection.get("min_slices", 0))
        if len(instances) < minimum:
            return f"only {len(instances)} images, rule wants at least {minimum}"
        return ""
