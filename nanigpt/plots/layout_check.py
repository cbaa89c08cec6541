"""Figures whose text fits: find text that runs off a figure's canvas, is cut, or covers other text.

Serves every figure of the study (issue 26: "no text of any figure that `all` builds runs off its
canvas or over another label"). Input is an SVG as vl-convert writes it from a Vega(-Lite) chart.
Each line of each `<text>` gets a box in canvas pixels:
- width: the sum of the characters' advance widths in the font vl-convert draws `sans-serif` with
  (Liberation Sans, which has Arial's metrics), `ADVANCES` below, per 1000 units of font size;
  `measure_advances` is the reference that measured them with vl-convert's own text measurement
  (Vega's autosize around a single text mark), and tests/test_layout_check.py holds the two equal;
- height: from the baseline, 0.72 em up (cap height and ascenders) and 0.2 em down (descenders),
  Liberation Sans' outlines rounded out;
- place: its anchor (`text-anchor` start/middle/end) at its position, carried through every
  ancestor's `transform` (translate, rotate, scale, matrix; SVG 1.1, section 7.6).
A box is reported when it leaves the canvas (the root `width` x `height`), leaves the clip rectangle
of an ancestor (`clip-path`: the text is cut), ends in "…" (Vega truncated it at a `limit`), or
intersects a box of another text by more than `TOLERANCE_PX` in both directions. Invisible text
(`opacity="0"`, as Vega leaves the labels its `labelOverlap` removed; `display="none"`) is skipped.

    python -m nanigpt.plots.layout_check results/scaling/*.svg   # exit 1 and a line per problem
"""

from __future__ import annotations

import argparse
import math
import re
import sys
import xml.etree.ElementTree as ET
from dataclasses import dataclass
from pathlib import Path

SVG = "{http://www.w3.org/2000/svg}"
TOLERANCE_PX = 0.5  # boxes are estimates to about a pixel; a real collision is several
ASCENT_EM, DESCENT_EM = 0.72, 0.2
UNKNOWN_EM = 0.6  # a character outside the table: about the width of a digit

# Advance widths (1/1000 em) of `_CHARS` in vl-convert's sans-serif, measured by
# `measure_advances()` (normal, then bold); Arial's metrics.
_CHARS = "".join(chr(c) for c in range(32, 127)) + "αβγδΔσµ∝…±×≈–—·→←≤≥²³°√∞äöüé"
_NORMAL = """
278 278 355 557 557 890 667 191 334 334 390 584 278 334 278 278 557 557 557 557 557 557 557 557
557 557 278 278 584 584 584 557 1016 667 667 723 723 667 611 778 723 278 500 667 557 834 723 778
667 778 723 667 611 723 667 944 667 667 611 278 278 278 470 557 334 557 557 500 557 557 278 557
557 223 223 500 223 834 557 557 557 557 334 500 278 557 500 723 500 500 500 334 260 334 584 579
576 500 557 668 618 577 747 1000 549 584 549 557 1000 334 1000 1000 549 549 334 334 400 549 713
557 557 557 557
"""
_BOLD = """
278 333 474 556 556 889 722 238 333 333 389 584 278 333 278 278 556 556 556 556 556 556 556 556
556 556 333 333 584 584 584 611 975 722 722 722 722 667 611 778 722 278 556 722 611 833 722 778
667 778 722 667 611 722 667 944 667 667 611 333 278 333 584 556 333 556 611 556 611 556 333 611
611 278 278 556 278 889 611 611 611 611 389 556 333 611 556 778 556 556 500 389 280 389 584 615
610 556 606 719 684 576 634 1000 549 584 549 556 1000 333 1000 1000 549 549 333 333 400 549 713
556 611 611 556
"""
ADVANCES = {
    weight: dict(zip(_CHARS, map(int, table.split()), strict=True))
    for weight, table in (("normal", _NORMAL), ("bold", _BOLD))
}


def measure_advances(chars: str = _CHARS, weight: str = "normal") -> dict[str, int]:
    """The reference: each character's advance width (1/1000 em) as vl-convert measures it, the
    width Vega's autosize gives a text mark "x{c}x" at 1000 px, less that of "xx"."""
    import vl_convert

    def width(text: str) -> int:
        mark = {
            "type": "text",
            "encode": {
                "enter": {
                    "text": {"value": text},
                    "fontSize": {"value": 1000},
                    "fontWeight": {"value": weight},
                    "font": {"value": "sans-serif"},
                    "baseline": {"value": "top"},
                }
            },
        }
        spec = {"autosize": {"type": "pad"}, "padding": 0, "width": 0, "height": 0}
        return vl_convert.vega_to_scenegraph({**spec, "marks": [mark]})["width"]

    pair = width("xx")
    return {c: width(f"x{c}x") - pair for c in chars}


def text_width(text: str, font_size: float, bold: bool = False) -> float:
    """Estimated advance width (px) of one line of sans-serif text."""
    table = ADVANCES["bold" if bold else "normal"]
    return sum(table.get(c, UNKNOWN_EM * 1000) for c in text) * font_size / 1000


@dataclass(frozen=True)
class Box:
    text: str
    x0: float
    y0: float
    x1: float
    y1: float
    element: int  # which <text> it belongs to: lines of one text do not collide with each other
    clip: tuple[float, float, float, float] | None = None

    def describe(self) -> str:
        short = self.text if len(self.text) <= 60 else f"{self.text[:57]}..."
        return f"{short!r} at x {self.x0:.0f}..{self.x1:.0f}, y {self.y0:.0f}..{self.y1:.0f}"


Matrix = tuple[float, float, float, float, float, float]  # SVG's (a, b, c, d, e, f)
IDENTITY: Matrix = (1.0, 0.0, 0.0, 1.0, 0.0, 0.0)


def _multiply(m: Matrix, n: Matrix) -> Matrix:
    """m then n applied inside it: the matrix of `transform="m n"`."""
    a, b, c, d, e, f = m
    a2, b2, c2, d2, e2, f2 = n
    return (
        a * a2 + c * b2,
        b * a2 + d * b2,
        a * c2 + c * d2,
        b * c2 + d * d2,
        a * e2 + c * f2 + e,
        b * e2 + d * f2 + f,
    )


def _apply(m: Matrix, x: float, y: float) -> tuple[float, float]:
    a, b, c, d, e, f = m
    return a * x + c * y + e, b * x + d * y + f


_TRANSFORM = re.compile(r"(matrix|translate|scale|rotate|skewX|skewY)\s*\(([^)]*)\)")


def parse_transform(text: str | None) -> Matrix:
    """The matrix of an SVG `transform` attribute (SVG 1.1, 7.6)."""
    m = IDENTITY
    for name, args in _TRANSFORM.findall(text or ""):
        v = [float(a) for a in re.split(r"[\s,]+", args.strip()) if a]
        if name == "matrix":
            n = tuple(v)
        elif name == "translate":
            n = (1.0, 0.0, 0.0, 1.0, v[0], v[1] if len(v) > 1 else 0.0)
        elif name == "scale":
            n = (v[0], 0.0, 0.0, v[1] if len(v) > 1 else v[0], 0.0, 0.0)
        elif name == "rotate":
            t = math.radians(v[0])
            n = (math.cos(t), math.sin(t), -math.sin(t), math.cos(t), 0.0, 0.0)
            if len(v) == 3:  # rotate(a, cx, cy) = translate(cx, cy) rotate(a) translate(-cx, -cy)
                n = _multiply(_multiply((1, 0, 0, 1, v[1], v[2]), n), (1, 0, 0, 1, -v[1], -v[2]))
        elif name == "skewX":
            n = (1.0, 0.0, math.tan(math.radians(v[0])), 1.0, 0.0, 0.0)
        else:
            n = (1.0, math.tan(math.radians(v[0])), 0.0, 1.0, 0.0, 0.0)
        m = _multiply(m, n)
    return m


def _px(value: str | None, default: float) -> float:
    if not value:
        return default
    match = re.match(r"\s*([-+0-9.eE]+)", value)
    return float(match.group(1)) if match else default


def _style(element: ET.Element, name: str) -> str | None:
    """An attribute, or the same property in the element's `style`."""
    for part in (element.get("style") or "").split(";"):
        key, _, value = part.partition(":")
        if key.strip() == name:
            return value.strip()
    return element.get(name)


def _bounds(m: Matrix, x0: float, y0: float, x1: float, y1: float) -> tuple:
    corners = [_apply(m, x, y) for x, y in ((x0, y0), (x1, y0), (x0, y1), (x1, y1))]
    xs, ys = [p[0] for p in corners], [p[1] for p in corners]
    return min(xs), min(ys), max(xs), max(ys)


def _intersect(a: tuple | None, b: tuple | None) -> tuple | None:
    if a is None or b is None:
        return a or b
    return max(a[0], b[0]), max(a[1], b[1]), min(a[2], b[2]), min(a[3], b[3])


def _lines(element: ET.Element) -> list[tuple[str, float | None, float]]:
    """(text, x reset or None, dy) per line: Vega writes one <tspan> per line after the first."""
    spans = element.findall(f"{SVG}tspan")
    if not spans:
        return [("".join(element.itertext()), None, 0.0)]
    lines = []
    for span in spans:
        x = span.get("x")
        lines.append(
            ("".join(span.itertext()), None if x is None else float(x), _px(span.get("dy"), 0))
        )
    return lines


def text_boxes(svg: str) -> tuple[list[Box], tuple[float, float]]:
    """Every visible line of text as a box in canvas pixels, and the canvas (width, height)."""
    root = ET.fromstring(svg)
    if root.tag != f"{SVG}svg":
        raise ValueError(f"not an SVG document (root element {root.tag!r})")
    view = (root.get("viewBox") or "").split()
    width = _px(root.get("width"), float(view[2]) if len(view) == 4 else math.nan)
    height = _px(root.get("height"), float(view[3]) if len(view) == 4 else math.nan)
    clips: dict[str, tuple[float, float, float, float]] = {}
    for clip_path in root.iter(f"{SVG}clipPath"):
        rect = clip_path.find(f"{SVG}rect")
        if rect is not None:
            x, y = _px(rect.get("x"), 0), _px(rect.get("y"), 0)
            w, h = _px(rect.get("width"), 0), _px(rect.get("height"), 0)
            clips[clip_path.get("id", "")] = (x, y, x + w, y + h)
    boxes: list[Box] = []

    def walk(element: ET.Element, m: Matrix, clip: tuple | None) -> None:
        if element.tag in (f"{SVG}defs", f"{SVG}clipPath"):
            return
        if _style(element, "display") == "none" or _style(element, "visibility") == "hidden":
            return
        for name in ("opacity", "fill-opacity"):
            if _px(_style(element, name), 1.0) == 0.0:
                return
        m = _multiply(m, parse_transform(element.get("transform")))
        ref = re.match(r"url\(#([^)]+)\)", element.get("clip-path") or "")
        if ref and ref.group(1) in clips:
            clip = _intersect(clip, _bounds(m, *clips[ref.group(1)]))
        if element.tag == f"{SVG}text":
            boxes.extend(_text_boxes(element, m, clip, len(boxes)))
            return
        for child in element:
            walk(child, m, clip)

    walk(root, IDENTITY, None)
    return boxes, (width, height)


def _text_boxes(element: ET.Element, m: Matrix, clip: tuple | None, index: int) -> list[Box]:
    size = _px(_style(element, "font-size"), 10.0)
    weight = _style(element, "font-weight") or "normal"
    bold = weight == "bold" or (weight.isdigit() and int(weight) >= 600)
    anchor = _style(element, "text-anchor") or "start"
    x0, y = _px(element.get("x"), 0) + _px(element.get("dx"), 0), _px(element.get("y"), 0)
    y += _px(element.get("dy"), 0)
    out, x = [], x0
    for text, x_reset, dy in _lines(element):
        x, y = (x if x_reset is None else x_reset), y + dy
        if not text.strip():
            continue
        w = text_width(text, size, bold)
        left = {"middle": x - w / 2, "end": x - w}.get(anchor, x)
        box = _bounds(m, left, y - ASCENT_EM * size, left + w, y + DESCENT_EM * size)
        out.append(Box(text, *box, element=index, clip=clip))
    return out


def problems(svg: str, tolerance: float = TOLERANCE_PX) -> list[str]:
    """One line per text that runs off the canvas, is cut by a clip, truncated, or overlaps."""
    boxes, (width, height) = text_boxes(svg)
    found = []
    for box in boxes:
        if box.clip is not None and (
            box.x0 < box.clip[0] - tolerance
            or box.y0 < box.clip[1] - tolerance
            or box.x1 > box.clip[2] + tolerance
            or box.y1 > box.clip[3] + tolerance
        ):
            found.append(f"cut by its clip: {box.describe()}")
        elif box.x0 < -tolerance or box.y0 < -tolerance:
            found.append(f"off the canvas (left/top): {box.describe()}")
        elif box.x1 > width + tolerance or box.y1 > height + tolerance:
            found.append(f"off the canvas ({width:.0f} x {height:.0f}): {box.describe()}")
        if box.text.rstrip().endswith("…"):
            found.append(f"truncated: {box.describe()}")
    ordered = sorted(boxes, key=lambda b: b.x0)
    for i, a in enumerate(ordered):
        for b in ordered[i + 1 :]:
            if b.x0 >= a.x1 - tolerance:
                break
            if a.element == b.element:
                continue
            dx = min(a.x1, b.x1) - max(a.x0, b.x0)
            dy = min(a.y1, b.y1) - max(a.y0, b.y0)
            if dx > tolerance and dy > tolerance:
                found.append(f"overlap: {a.describe()} and {b.describe()}")
    return found


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("svgs", nargs="+", type=Path, help="SVG files written by vl-convert")
    args = parser.parse_args(argv)
    bad = 0
    for path in args.svgs:
        try:
            found = problems(path.read_text())
        except (OSError, ValueError, ET.ParseError) as e:
            print(f"error: {path}: {e}", file=sys.stderr)
            return 2
        for line in found:
            print(f"{path}: {line}")
        bad += bool(found)
    print(f"{len(args.svgs) - bad} of {len(args.svgs)} figures fit their text")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
