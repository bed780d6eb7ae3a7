"""How well the classifier does: accuracy and top-5 per head, per-class report, confusion PNG."""

from __future__ import annotations

import io

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from .labels import HEADS

# Words, not arrows: Pillow's built-in font has no arrows (they rendered as boxes).
AXES_CAPTION = "rows: true class, columns: predicted"


def _glyph(font, char: str) -> bytes:
    image = Image.new("L", (32, 32))
    ImageDraw.Draw(image).text((4, 4), char, font=font, fill=255)
    return image.tobytes()


def missing_glyphs(text: str, font=None) -> list[str]:
    """The characters of ``text`` the font draws as its 'missing glyph' box."""
    font = font or ImageFont.load_default()
    box = _glyph(font, "\uffff")  # a noncharacter: no font has it
    return sorted({c for c in text if not c.isspace() and _glyph(font, c) == box})


def drawable(text: str, font=None) -> str:
    """``text`` with every character the font lacks replaced by '?' (never a box)."""
    missing = set(missing_glyphs(text, font))
    return "".join("?" if c in missing else c for c in text)


def head_metrics(probs: dict[str, np.ndarray], targets: dict[str, np.ndarray]) -> dict[str, dict[str, float]]:
    metrics = {}
    for head in HEADS:
        p, t = probs[head], targets[head]
        top5 = np.argsort(-p, axis=1)[:, :5]
        metrics[head] = {
            "accuracy": float((p.argmax(1) == t).mean()) if len(t) else 0.0,
            "top5": float((top5 == t[:, None]).any(1).mean()) if len(t) else 0.0,
        }
    return metrics


def per_class_rows(pred: np.ndarray, target: np.ndarray, classes: list[str]) -> list[tuple]:
    """(class, support, precision, recall, f1) per class, most frequent first."""
    rows = []
    for index, name in enumerate(classes):
        tp = int(((pred == index) & (target == index)).sum())
        support = int((target == index).sum())
        predicted = int((pred == index).sum())
        precision = tp / predicted if predicted else 0.0
        recall = tp / support if support else 0.0
        f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
        rows.append((name, support, round(precision, 3), round(recall, 3), round(f1, 3)))
    return sorted(rows, key=lambda r: -r[1])


def confusion_png(pred: np.ndarray, target: np.ndarray, classes: list[str], top: int = 15, cell: int = 26) -> bytes:
    """Row-normalised confusion matrix of the ``top`` most frequent classes, as a PNG."""
    order = [i for i, _ in sorted(enumerate(classes), key=lambda ic: -int((target == ic[0]).sum()))][:top]
    n = len(order)
    matrix = np.zeros((n, n))
    for r, true_class in enumerate(order):
        mask = target == true_class
        for c, predicted_class in enumerate(order):
            matrix[r, c] = ((pred == predicted_class) & mask).sum() / max(1, mask.sum())
    label_w = 150
    img = Image.new("RGB", (label_w + n * cell + 10, label_w + n * cell + 10), "white")
    draw = ImageDraw.Draw(img)
    for r in range(n):
        for c in range(n):
            shade = int(255 * (1 - matrix[r, c]))
            x, y = label_w + c * cell, label_w + r * cell
            draw.rectangle([x, y, x + cell - 1, y + cell - 1], fill=(shade, shade, 255))
            if matrix[r, c] >= 0.01:
                draw.text((x + 2, y + 7), f"{round(100 * matrix[r, c])}", fill="black" if shade > 120 else "white")
        draw.text((4, label_w + r * cell + 7), drawable(classes[order[r]][:22]), fill="black")
    for c in range(n):  # column labels, written vertically
        text = drawable(classes[order[c]][:22])
        layer = Image.new("RGB", (label_w - 4, cell), "white")
        ImageDraw.Draw(layer).text((2, 7), text, fill="black")
        img.paste(layer.rotate(90, expand=True), (label_w + c * cell, 2))
    for line, caption in enumerate(AXES_CAPTION.split(", ")):
        draw.text((4, 4 + 14 * line), caption, fill="gray")
    buffer = io.BytesIO()
    img.save(buffer, "PNG", optimize=True)
    return buffer.getvalue()


HEAD_COLOURS = {"master_category": (31, 119, 180), "sub_category": (44, 160, 44), "article_type": (214, 39, 40)}


def precision_coverage_png(probs: dict[str, np.ndarray], truth: dict[str, np.ndarray], calibration: dict | None,
                           target: float, part: str, width: int = 520, height: int = 360) -> bytes:
    """Precision against coverage of tagging the most confident images first, one line per head
    (calibrated confidences), with each head's auto-tag threshold marked and the asked precision
    as a dashed line: how much of the catalog can be tagged without a person, at what precision."""
    from .calibration import calibrated, head_calibration, precision_and_coverage, precision_curve

    labels = {"calibration": calibration} if calibration else {}
    left, top, right, bottom = 60, 40, 20, 50
    img = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(img)
    plot_w, plot_h = width - left - right, height - top - bottom
    y_min = 0.5

    def xy(coverage: float, precision: float) -> tuple[float, float]:
        y = (max(precision, y_min) - y_min) / (1 - y_min)
        return left + coverage * plot_w, top + (1 - y) * plot_h

    draw.rectangle([left, top, left + plot_w, top + plot_h], outline=(160, 160, 160))
    for tick in range(6):
        x = left + tick * plot_w / 5
        draw.text((x - 8, top + plot_h + 4), f"{tick * 20}%", fill="gray")
        y = top + tick * plot_h / 5
        draw.text((8, y - 6), f"{100 - tick * 10}%", fill="gray")
    _, target_y = xy(0, target)
    for x in range(left, left + plot_w, 8):
        draw.line([x, target_y, x + 4, target_y], fill=(120, 120, 120))
    draw.text((left + 4, target_y - 14), f"asked precision {target:.0%}", fill=(90, 90, 90))
    for row, head in enumerate(HEADS):
        keep = truth[head] >= 0
        q = calibrated({head: probs[head][keep]}, labels)[head]
        confidence, correct = q.max(1), q.argmax(1) == truth[head][keep]
        _, precision, coverage = precision_curve(confidence, correct)
        colour = HEAD_COLOURS[head]
        if len(precision) > 1:
            step = max(1, len(precision) // 400)
            draw.line([xy(c, p) for c, p in zip(coverage[::step], precision[::step], strict=True)], fill=colour,
                      width=2)
        threshold = head_calibration(labels, head).threshold
        at, covered = precision_and_coverage(confidence, correct, threshold)
        label = head.replace("_", " ")
        if at is not None:
            x, y = xy(covered, at)
            draw.ellipse([x - 4, y - 4, x + 4, y + 4], outline="black", fill=colour)
            label += f": {at:.1%} precise on {covered:.0%}"
        else:
            label += ": never automatic"
        draw.text((left + 8, top + plot_h - 16 * (len(HEADS) - row)), label, fill=colour)
    draw.text((left, 8), f"precision vs coverage, {part} (dot: auto-tag threshold)", fill="black")
    draw.text((left + plot_w // 2 - 60, height - 18), "coverage (share tagged)", fill="gray")
    buffer = io.BytesIO()
    img.save(buffer, "PNG", optimize=True)
    return buffer.getvalue()
