"""The one-page summary of a job's result, as PDF bytes (A4 portrait).

Written by hand as a PDF of real text in the standard Helvetica fonts (nothing
embedded), not as a picture of a page: the text is sharp at any zoom and in print, can
be searched and copied, the file is a few kilobytes, and with no clock and no random
identifier in it the same result always gives the same bytes. Text is encoded in
WinAnsi (cp1252); a character outside it prints as "?".

The page names the patient (name, ID, birth date) and the study: PACS often open a PDF
in a window of its own, without the image viewer's patient banner, and a printed page
is read apart from the PACS; a page without identifiers could be filed in the wrong
patient's chart. The key images carry no burned-in identity, as viewers show the
header's.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from pydicom.dataset import Dataset
from pydicom.valuerep import PersonName

from node import __version__
from node.domain import Finding
from node.results.context import EncodingInput
from node.results.fleischner import Recommendation, fleischner_2017

TITLE = "AI results - not verified by a radiologist"
NO_FINDINGS = "No nodules detected (AI, unverified)."
SUBTITLE = (
    "Output of an AI model for decision support. This is not a radiologist's report: "
    "verify every finding on the images before relying on it."
)
INTENDED_USE = (
    "Intended use: decision support only. The AI marks candidate findings for a "
    "radiologist to verify; it does not diagnose, and it may miss findings or mark "
    "normal structures."
)
NOT_FOR_CLINICAL_USE = (
    "Not for clinical use: this model is not a clinical device and is not validated for "
    "diagnosis or screening."
)
LOCATION_NOTE = (
    "Location: centroid in DICOM patient coordinates (x towards the patient's left, "
    "y posterior, z head). Image: instance number of the key slice in the series "
    "analysed. Size for the guideline: mean of long and short axis, rounded."
)
MAX_TABLE_ROWS = 20  # more findings are listed in the SR; the page says how many

PAGE_WIDTH = 595.28  # A4 in points
PAGE_HEIGHT = 841.89
MARGIN = 48.0
BANNER_RED = (0.59, 0.0, 0.0)
BLACK = (0.0, 0.0, 0.0)
WHITE = (1.0, 1.0, 1.0)
GREY = (0.35, 0.35, 0.35)
Color = tuple[float, float, float]

# (header, x offset from the margin) of the findings table.
TABLE_COLUMNS = (
    ("Finding", 0.0),
    ("Image", 62.0),
    ("Location x, y, z (mm)", 100.0),
    ("Long x short (mm)", 220.0),
    ("Volume (mm3)", 310.0),
    ("Mean HU", 380.0),
    ("Score", 435.0),
)


def render_summary_pdf(inp: EncodingInput) -> bytes:
    """The summary page of `inp` as a complete PDF file of even length."""
    page = _Page()
    _banner(page)
    _study_section(page, inp)
    _model_section(page, inp)
    _findings_section(page, inp)
    recommendation = (
        fleischner_2017(inp.findings) if inp.decision_support == "fleischner-2017" else None
    )
    if recommendation is not None:
        _recommendation_section(page, recommendation)
    _footer(page, inp)
    return write_pdf(page.content(), title=TITLE)


def write_pdf(content: bytes, *, title: str) -> bytes:
    """A one-page A4 PDF around a content stream that uses fonts F1 and F2.

    F1 is Helvetica, F2 Helvetica-Bold (standard fonts every reader has). The file has
    no dates or IDs, so its bytes depend on the content only; a newline is added at
    the end when needed to make the length even (DICOM values are even).
    """
    objects = [
        b"<< /Type /Catalog /Pages 2 0 R >>",
        b"<< /Type /Pages /Kids [3 0 R] /Count 1 >>",
        b"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 %s %s] "
        b"/Resources << /Font << /F1 4 0 R /F2 5 0 R >> >> /Contents 6 0 R >>"
        % (_number(PAGE_WIDTH), _number(PAGE_HEIGHT)),
        b"<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica /Encoding /WinAnsiEncoding >>",
        b"<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica-Bold /Encoding /WinAnsiEncoding >>",
        b"<< /Length %d >>\nstream\n%s\nendstream" % (len(content), content),
        b"<< /Title %s /Producer %s >>"
        % (_pdf_string(title), _pdf_string(f"Radnode {__version__}")),
    ]
    out = bytearray(b"%PDF-1.4\n%\xe2\xe3\xcf\xd3\n")
    offsets = []
    for number, body in enumerate(objects, start=1):
        offsets.append(len(out))
        out += b"%d 0 obj\n%s\nendobj\n" % (number, body)
    xref = len(out)
    out += b"xref\n0 %d\n0000000000 65535 f \n" % (len(objects) + 1)
    out += b"".join(b"%010d 00000 n \n" % offset for offset in offsets)
    out += b"trailer\n<< /Size %d /Root 1 0 R /Info %d 0 R >>\nstartxref\n%d\n%%%%EOF\n" % (
        len(objects) + 1,
        len(objects),
        xref,
    )
    if len(out) % 2:
        out += b"\n"
    return bytes(out)


def text_width(text: str, size: float, *, bold: bool = False) -> float:
    """An upper estimate of the width of `text` in Helvetica, in points.

    Used only to wrap lines. Without the font's metrics, each character counts as the
    widest of its kind in Helvetica (so a line never runs past the estimate).
    """
    em = 0.0
    for char in text:
        if char in " ilIjft.,:;'!|()[]/-":
            em += 0.34
        elif char in "mwMW@%":
            em += 0.95
        elif char.isupper():
            em += 0.78
        elif char.isdigit() or char.islower():
            em += 0.56
        else:
            em += 0.6
    return em * size * (1.1 if bold else 1.0)


def wrap(text: str, width: float, size: float, *, bold: bool = False) -> list[str]:
    """`text` broken at spaces into lines no wider than `width` (a long word stays whole)."""
    lines: list[str] = []
    current = ""
    for word in text.split():
        candidate = f"{current} {word}" if current else word
        if current and text_width(candidate, size, bold=bold) > width:
            lines.append(current)
            current = word
        else:
            current = candidate
    if current:
        lines.append(current)
    return lines


@dataclass
class _Page:
    """Drawing operations on one page; y grows downwards from the top, in points."""

    y: float = MARGIN
    ops: list[bytes] = field(default_factory=list)

    def text(
        self,
        x: float,
        y: float,
        text: str,
        size: float,
        *,
        bold: bool = False,
        color: Color = BLACK,
    ) -> None:
        """One line of text whose baseline is at `y`."""
        font = b"F2" if bold else b"F1"
        self.ops.append(
            b"%s rg BT /%s %s Tf %s %s Td %s Tj ET"
            % (_color(color), font, _number(size), _number(x), _number(PAGE_HEIGHT - y),
               _pdf_string(text))
        )  # fmt: skip

    def rect(self, x: float, y: float, width: float, height: float, color: Color) -> None:
        """A filled rectangle whose top left corner is (x, y)."""
        self.ops.append(
            b"%s rg %s %s %s %s re f"
            % (_color(color), _number(x), _number(PAGE_HEIGHT - y - height), _number(width),
               _number(height))
        )  # fmt: skip

    def rule(self, y: float, *, width: float = 0.5, color: Color = GREY) -> None:
        """A horizontal line across the text area."""
        self.ops.append(
            b"%s RG %s w %s %s m %s %s l S"
            % (_color(color), _number(width), _number(MARGIN), _number(PAGE_HEIGHT - y),
               _number(PAGE_WIDTH - MARGIN), _number(PAGE_HEIGHT - y))
        )  # fmt: skip

    def paragraph(
        self,
        text: str,
        size: float,
        *,
        x: float = MARGIN,
        width: float = PAGE_WIDTH - 2 * MARGIN,
        bold: bool = False,
        color: Color = BLACK,
    ) -> None:
        """Wrapped text from the current position; moves the position below it."""
        for line in wrap(text, width, size, bold=bold):
            self.y += size * 1.3
            self.text(x, self.y, line, size, bold=bold, color=color)

    def heading(self, text: str) -> None:
        """A section heading with some space above it."""
        self.y += 12
        self.paragraph(text, 12, bold=True)
        self.y += 3

    def content(self) -> bytes:
        """The page's content stream."""
        return b"\n".join(self.ops)


def _banner(page: _Page) -> None:
    page.rect(0, 0, PAGE_WIDTH, 78, BANNER_RED)
    page.text(MARGIN, 36, TITLE, 20, bold=True, color=WHITE)
    page.y = 44
    page.paragraph(SUBTITLE, 9, color=WHITE)
    page.y = 84


def _study_section(page: _Page, inp: EncodingInput) -> None:
    source = inp.sources[0]
    page.heading("Patient and study")
    page.paragraph(
        f"Patient: {_person_name(source)}    Patient ID: {_get(source, 'PatientID')}    "
        f"Birth date: {_date(_get(source, 'PatientBirthDate'))}",
        10,
    )
    page.paragraph(
        f"Study date: {_date(_get(source, 'StudyDate'))} {_time(_get(source, 'StudyTime'))}"
        f"    Accession: {_get(source, 'AccessionNumber')}"
        f"    Study: {_get(source, 'StudyDescription')}",
        10,
    )
    thickness = inp.volume.slice_thickness_mm
    page.paragraph(
        f"Series analysed: {_get(source, 'Modality')} series {_get(source, 'SeriesNumber')} "
        f"{_get(source, 'SeriesDescription')}, {len(inp.sources)} images"
        + (f", {thickness:g} mm slices" if thickness else ""),
        10,
    )


def _model_section(page: _Page, inp: EncodingInput) -> None:
    model = inp.model
    page.heading("AI model")
    page.paragraph(
        f"{model.name} {model.version} ({model.manufacturer})    Device UID: {model.device_uid}",
        10,
    )
    page.paragraph(model.description, 9, color=GREY)


def _findings_section(page: _Page, inp: EncodingInput) -> None:
    findings = inp.findings
    page.heading(f"Findings ({len(findings)})")
    if not findings:
        page.paragraph(NO_FINDINGS, 11, bold=True)
        page.paragraph(
            "The series was analysed. The absence of AI findings does not exclude nodules: "
            "review the images.",
            9,
        )
        return
    page.y += 12
    for header, offset in TABLE_COLUMNS:
        page.text(MARGIN + offset, page.y, header, 9, bold=True)
    page.rule(page.y + 4)
    page.y += 4
    for finding in findings[:MAX_TABLE_ROWS]:
        page.y += 13
        for (_, offset), cell in zip(TABLE_COLUMNS, _row(inp, finding), strict=True):
            page.text(MARGIN + offset, page.y, cell, 9)
    if len(findings) > MAX_TABLE_ROWS:
        page.paragraph(f"... and {len(findings) - MAX_TABLE_ROWS} more findings (see the SR).", 9)
    page.y += 6
    page.paragraph(LOCATION_NOTE, 8, color=GREY)


def _row(inp: EncodingInput, finding: Finding) -> Sequence[str]:
    x, y, z = finding.centroid_mm
    k = finding.key_slice
    image = inp.sources[k].get("InstanceNumber", "") if 0 <= k < len(inp.sources) else ""
    return (
        finding.tracking_id,
        str(image),
        f"{x:.1f}, {y:.1f}, {z:.1f}",
        f"{finding.long_axis_mm:.1f} x {finding.short_axis_mm:.1f}",
        f"{finding.volume_mm3:.0f}",
        f"{finding.mean_hu:.0f}",
        f"{finding.score:.2f}",
    )


def _recommendation_section(page: _Page, recommendation: Recommendation) -> None:
    page.heading(f"Decision support: {recommendation.guideline}")
    page.paragraph(
        f"{recommendation.nodules.capitalize()} solid nodule(s); guiding nodule "
        f"{recommendation.guiding_tracking_id}: {recommendation.size_mm} mm "
        f"(size band {recommendation.size_band} mm). The patient's risk is not known to "
        "the AI: both columns are given.",
        10,
    )
    column_width = (PAGE_WIDTH - 2 * MARGIN - 16) / 2
    top = page.y + 6
    bottoms = []
    for index, (header, text) in enumerate(
        (
            ("Low-risk patient", recommendation.low_risk),
            ("High-risk patient", recommendation.high_risk),
        )
    ):
        page.y = top
        x = MARGIN + index * (column_width + 16)
        page.paragraph(header, 10, x=x, width=column_width, bold=True)
        page.paragraph(text, 10, x=x, width=column_width)
        bottoms.append(page.y)
    page.y = max(bottoms) + 6
    page.paragraph(recommendation.caveat, 8.5, color=GREY)


def _footer(page: _Page, inp: EncodingInput) -> None:
    lines = [INTENDED_USE]
    if inp.model.not_for_clinical_use:
        lines.append(NOT_FOR_CLINICAL_USE)
    lines.append(
        f"Made by Radnode {__version__}, job {inp.job_id}. Every object of this result is "
        "marked AI-generated and unverified."
    )
    height = sum(len(wrap(line, PAGE_WIDTH - 2 * MARGIN, 8.5)) for line in lines) * 8.5 * 1.3
    page.y = max(page.y + 12, PAGE_HEIGHT - MARGIN - height - 6)
    page.rule(page.y)
    page.y += 2
    for line in lines:
        page.paragraph(line, 8.5)


def _get(source: Dataset, keyword: str) -> str:
    value = source.get(keyword)
    return "" if value is None else str(value)


def _person_name(source: Dataset) -> str:
    """A name as people write it ("FAMILY, Given Middle"); the raw value otherwise."""
    value = source.get("PatientName")
    if value is None:
        return ""
    name = PersonName(value) if not isinstance(value, PersonName) else value
    given = " ".join(part for part in (name.given_name, name.middle_name) if part)
    readable = ", ".join(part for part in (name.family_name, given) if part)
    return readable or str(value)


def _date(value: str) -> str:
    """YYYYMMDD as YYYY-MM-DD; anything else as it is."""
    return (
        f"{value[:4]}-{value[4:6]}-{value[6:8]}" if len(value) == 8 and value.isdigit() else value
    )


def _time(value: str) -> str:
    """HHMMSS(.ffffff) as HH:MM; anything else as it is."""
    return f"{value[:2]}:{value[2:4]}" if len(value) >= 4 and value[:4].isdigit() else value


def _number(value: float) -> bytes:
    """A PDF number: at most two decimals, no exponent."""
    return (f"{value:.2f}".rstrip("0").rstrip(".") or "0").encode("ascii")


def _color(color: Color) -> bytes:
    return b" ".join(_number(part) for part in color)


def _pdf_string(text: str) -> bytes:
    """A PDF literal string in WinAnsi; backslash and parentheses escaped."""
    raw = text.encode("cp1252", errors="replace")
    for char, escaped in ((b"\\", b"\\\\"), (b"(", b"\\("), (b")", b"\\)")):
        raw = raw.replace(char, escaped)
    raw = raw.replace(b"\r", b" ").replace(b"\n", b" ")
    return b"(" + raw + b")"
