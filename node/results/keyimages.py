"""Key images for viewers that show neither SEG nor SR: a finding's key slice in a lung
window, with its contour, its axes, a label and an AI banner burned in.

Pixels only; `node.results.fallbacks` wraps them in a secondary capture. The slice is
enlarged by a whole factor to about TARGET_SIZE pixels, so that the banner and the
label stay legible where a viewer shows the image at its own size (a 512 x 512 CT is
drawn at 1024 x 1024). A banner band sits above the slice, so that no anatomy is
hidden under it: source pixel (j, i) covers canvas rows `top + j * scale` to
`top + (j + 1) * scale - 1` and columns `i * scale` to `(i + 1) * scale - 1`.

One image per finding, showing that finding only: instance n is finding n, and two
findings on one slice give two images, each with its own label next to its contour.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import numpy as np
import numpy.typing as npt
from PIL import Image, ImageDraw, ImageFont
from scipy import ndimage

from node.domain import Finding
from node.domain.volume import Volume
from node.results.context import EncodingInput

LUNG_WINDOW_WIDTH = 1500.0
LUNG_WINDOW_LEVEL = -600.0
TARGET_SIZE = 1024  # canvas width aimed at; the scale is a whole number, at least 1
BANNER = "AI-GENERATED - NOT VERIFIED BY A RADIOLOGIST"
BANNER_BACKGROUND = (150, 0, 0)
TEXT_COLOR = (255, 255, 255)
AXIS_COLOR = (255, 255, 0)
LABEL_BACKGROUND = (0, 0, 0)
CONTOUR_WIDTH = 2  # canvas pixels, drawn just inside the finding's edge
PADDING = 8  # canvas pixels around text

Font = ImageFont.FreeTypeFont | ImageFont.ImageFont
RGB = tuple[int, int, int]


@dataclass(frozen=True, slots=True)
class KeyImage:
    """One rendered key image: RGB pixels, and where the source slice lies in them."""

    finding_number: int  # 1-based, as in `EncodingInput.findings`
    source_index: int  # the key slice k of the volume
    pixels: npt.NDArray[np.uint8]  # (rows, columns, 3)
    scale: int  # canvas pixels per source pixel, along rows and columns
    top: int  # rows of banner above the slice
    label: str  # the text next to the finding


def scale_for(rows: int, columns: int) -> int:
    """The whole enlargement that brings the larger side closest to TARGET_SIZE, >= 1."""
    return max(1, TARGET_SIZE // max(rows, columns))


def lung_window(hu: npt.NDArray[np.float32]) -> npt.NDArray[np.uint8]:
    """8-bit grey levels of a lung window (W 1500, L -600), linear, clipped."""
    low = LUNG_WINDOW_LEVEL - LUNG_WINDOW_WIDTH / 2
    scaled = (hu.astype(np.float32) - low) * np.float32(255.0 / LUNG_WINDOW_WIDTH)
    grey: npt.NDArray[np.uint8] = np.clip(scaled + 0.5, 0, 255).astype(np.uint8)
    return grey


def finding_label(finding: Finding) -> str:
    """The label burned in beside a finding: tracking id and measurements."""
    return (
        f"{finding.tracking_id}: {finding.long_axis_mm:.1f} x {finding.short_axis_mm:.1f} mm, "
        f"{finding.volume_mm3:.0f} mm3, score {finding.score:.2f}"
    )


def patient_to_pixel(volume: Volume, point: tuple[float, float, float]) -> tuple[float, float]:
    """The (row j, column i) of a patient point (mm) on its slice, as floats."""
    affine = volume.affine
    kji = np.linalg.solve(affine[:3, :3], np.asarray(point, dtype=np.float64) - affine[:3, 3])
    return float(kji[1]), float(kji[2])


def render_key_image(inp: EncodingInput, number: int) -> KeyImage:
    """The key image of finding `number` (1-based).

    Raises
    ------
    ValueError
        The finding does not exist, its key slice is outside the volume, or it has
        no voxel on its key slice.
    """
    if not 1 <= number <= len(inp.findings):
        raise ValueError(f"finding {number} does not exist ({len(inp.findings)} findings)")
    finding = inp.findings[number - 1]
    k = finding.key_slice
    if not 0 <= k < inp.volume.shape[0]:
        raise ValueError(f"{finding.tracking_id}: key slice {k} is outside the volume")
    mask = inp.findings_labels[k] == number
    if not mask.any():
        raise ValueError(f"{finding.tracking_id}: no voxel of the finding on its key slice {k}")
    rows, columns = mask.shape
    scale = scale_for(rows, columns)
    width = columns * scale

    lines = _banner_lines(inp, number)
    title_font = _fitting_font(lines[0], width // 24, width - 2 * PADDING)
    info_font = _fitting_font(lines[1], width // 40, width - 2 * PADDING)
    title_height = _line_height(title_font)
    top = PADDING + title_height + _line_height(info_font) + PADDING

    grey = Image.fromarray(lung_window(inp.volume.hu[k]))
    if scale > 1:
        grey = grey.resize((width, rows * scale), Image.Resampling.BILINEAR)
    canvas = Image.new("RGB", (width, top + rows * scale), BANNER_BACKGROUND)
    canvas.paste(grey.convert("RGB"), (0, top))
    draw = ImageDraw.Draw(canvas)
    draw.text((PADDING, PADDING), lines[0], fill=TEXT_COLOR, font=title_font)
    draw.text((PADDING, PADDING + title_height), lines[1], fill=TEXT_COLOR, font=info_font)

    color = inp.model.finding_segment.color_rgb
    box = _draw_contour(canvas, mask, scale, top, color)
    _draw_axes(draw, inp.volume, finding, scale, top)
    label = finding_label(finding)
    _draw_label(draw, label, box, canvas.size, top, color)
    pixels = np.asarray(canvas, dtype=np.uint8)
    return KeyImage(number, k, pixels, scale, top, label)


def _banner_lines(inp: EncodingInput, number: int) -> tuple[str, str]:
    """The banner's warning, then the model and which key image this is."""
    model = inp.model
    finding = inp.findings[number - 1]
    source = inp.sources[finding.key_slice] if finding.key_slice < len(inp.sources) else None
    image = source.get("InstanceNumber") if source is not None else None
    where = f", source image {image}" if image is not None else ""
    info = (
        f"{model.name} {model.version} | key image {number} of {len(inp.findings)}{where}"
        f" | W {LUNG_WINDOW_WIDTH:.0f} L {LUNG_WINDOW_LEVEL:.0f}"
    )
    return BANNER, info


@lru_cache(maxsize=32)
def _font(size: int) -> Font:
    """Pillow's own font (no font files needed) at `size` pixels."""
    return ImageFont.load_default(size=size)


def _fitting_font(text: str, size: int, max_width: int) -> Font:
    """The font at `size`, or smaller until `text` fits in `max_width` (at least 10)."""
    size = max(size, 10)
    font = _font(size)
    while size > 10 and font.getlength(text) > max_width:
        size -= 1
        font = _font(size)
    return font


def _line_height(font: Font) -> int:
    """Height of one line of `font`, with a little leading."""
    size = font.size if isinstance(font, ImageFont.FreeTypeFont) else 11
    return round(size * 1.3)


def _draw_contour(
    canvas: Image.Image, mask: npt.NDArray[np.bool_], scale: int, top: int, color: RGB
) -> tuple[int, int, int, int]:
    """Paint the mask's edge on the canvas; returns the finding's box (x0, y0, x1, y1).

    The edge is taken on the enlarged mask, so the contour follows the source
    pixels' borders at CONTOUR_WIDTH canvas pixels, whatever the scale.
    """
    jj, ii = np.nonzero(mask)
    j0, j1 = int(jj.min()), int(jj.max()) + 1
    i0, i1 = int(ii.min()), int(ii.max()) + 1
    crop = np.repeat(np.repeat(mask[j0:j1, i0:i1], scale, axis=0), scale, axis=1)
    inner = ndimage.binary_erosion(crop, iterations=CONTOUR_WIDTH, border_value=0)
    edge = (crop & ~inner).astype(np.uint8) * 255
    x0, y0 = i0 * scale, top + j0 * scale
    canvas.paste(color, (x0, y0, x0 + edge.shape[1], y0 + edge.shape[0]), Image.fromarray(edge))
    return x0, y0, i1 * scale, top + j1 * scale


def _draw_axes(
    draw: ImageDraw.ImageDraw, volume: Volume, finding: Finding, scale: int, top: int
) -> None:
    """The long axis as a line, the short axis thinner, on the key slice."""
    for ends, line_width in (
        (finding.long_axis_endpoints_mm, 2),
        (finding.short_axis_endpoints_mm, 1),
    ):
        points = []
        for point in ends:
            j, i = patient_to_pixel(volume, point)
            centre = (scale - 1) / 2
            points.append((i * scale + centre, top + j * scale + centre))
        draw.line(points, fill=AXIS_COLOR, width=line_width)


def _draw_label(
    draw: ImageDraw.ImageDraw,
    label: str,
    box: tuple[int, int, int, int],
    size: tuple[int, int],
    top: int,
    color: RGB,
) -> None:
    """The label in a dark box beside the finding: right of it, or left near the edge."""
    width, height = size
    font = _font(max(14, width // 48))
    text_width = int(font.getlength(label)) + 2 * PADDING
    text_height = _line_height(font) + PADDING
    gap = 3 * PADDING
    x0, y0, x1, _ = box
    x = x1 + gap if x1 + gap + text_width <= width else max(0, x0 - gap - text_width)
    y = min(max(top, y0 - text_height - PADDING), height - text_height)
    draw.rectangle((x, y, x + text_width, y + text_height), fill=LABEL_BACKGROUND, outline=color)
    draw.text((x + PADDING, y + PADDING // 2), label, fill=TEXT_COLOR, font=font)
