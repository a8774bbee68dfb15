"""Decision support: the Fleischner Society 2017 recommendation for solid nodules.

MacMahon H. et al., Guidelines for Management of Incidental Pulmonary Nodules
Detected on CT Images: From the Fleischner Society 2017, Radiology 284(1):228-243.
Reference only: the node does not know the patient's risk, so the low-risk and the
high-risk recommendations are given side by side, and every text says that it needs
a radiologist's review. The guideline does not apply to lung cancer screening,
patients under 35, or patients with a known primary cancer or immunosuppression.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

from node.domain import Finding

GUIDELINE = "Fleischner Society 2017 (incidental pulmonary nodules)"
CAVEAT = (
    "Reference only, from AI measurements not verified by a radiologist. Applies to "
    "incidental nodules in adults of 35 or more; not to lung cancer screening, known "
    "cancer or immunosuppression."
)

# (nodules, size band) -> (low risk, high risk); size bands as the guideline gives them.
_SOLID = {
    ("single", "<6"): ("No routine follow-up.", "Optional CT at 12 months."),
    ("single", "6-8"): (
        "CT at 6-12 months, then consider CT at 18-24 months.",
        "CT at 6-12 months, then CT at 18-24 months.",
    ),
    ("single", ">8"): (
        "Consider CT at 3 months, PET/CT, or tissue sampling.",
        "Consider CT at 3 months, PET/CT, or tissue sampling.",
    ),
    ("multiple", "<6"): ("No routine follow-up.", "Optional CT at 12 months."),
    ("multiple", "6-8"): (
        "CT at 3-6 months, then consider CT at 18-24 months.",
        "CT at 3-6 months, then CT at 18-24 months.",
    ),
    ("multiple", ">8"): (
        "CT at 3-6 months, then consider CT at 18-24 months.",
        "CT at 3-6 months, then CT at 18-24 months.",
    ),
}


@dataclass(frozen=True, slots=True)
class Recommendation:
    """Both risk columns of the guideline for a set of solid nodules."""

    guideline: str
    nodules: str  # "single" or "multiple"
    size_band: str  # "<6", "6-8" or ">8" (mm)
    size_mm: int  # the guiding nodule's size: mean of long and short axis, rounded
    guiding_tracking_id: str
    low_risk: str
    high_risk: str
    caveat: str = CAVEAT

    def text(self) -> str:
        """One paragraph for reports."""
        return (
            f"{self.guideline}, {self.nodules} solid nodule(s), guiding nodule "
            f"{self.guiding_tracking_id} {self.size_mm} mm: low-risk patient: "
            f"{self.low_risk} High-risk patient: {self.high_risk} {self.caveat}"
        )


def nodule_size_mm(finding: Finding) -> int:
    """The guideline's size: the mean of long and short axis, rounded to the mm."""
    # Half a millimetre rounds up (Python's round() would round 6.5 to 6).
    return math.floor((finding.long_axis_mm + finding.short_axis_mm) / 2 + 0.5)


def size_band(size_mm: int) -> str:
    """The guideline's band for a size in whole mm."""
    if size_mm < 6:
        return "<6"
    if size_mm <= 8:
        return "6-8"
    return ">8"


def fleischner_2017(findings: Sequence[Finding]) -> Recommendation | None:
    """The recommendation for these solid nodules; None when there are none.

    With several nodules the most suspicious guides management; without a
    malignancy estimate, that is the largest.
    """
    if not findings:
        return None
    guiding = max(findings, key=lambda f: (nodule_size_mm(f), f.volume_mm3))
    size = nodule_size_mm(guiding)
    count = "single" if len(findings) == 1 else "multiple"
    band = size_band(size)
    low, high = _SOLID[(count, band)]
    return Recommendation(GUIDELINE, count, band, size, guiding.tracking_id, low, high)
