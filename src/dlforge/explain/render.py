"""Explanations as files a person opens: heatmaps over images (PNG), highlighted tokens (self-contained HTML),
per-column tables (CSV). Pillow and the standard library only; no plotting package, no external assets."""

from __future__ import annotations

import html
from pathlib import Path

import numpy as np

SCALE_TO = 224  # small images (28 px digits) are enlarged so a heatmap can be read


def _as_rgb(image: np.ndarray) -> np.ndarray:
    """(C, H, W) model input of any scaling -> (H, W, 3) uint8, each channel stretched to its range."""
    img = image.astype(np.float32)
    lo = img.min(axis=(1, 2), keepdims=True)
    hi = img.max(axis=(1, 2), keepdims=True)
    img = (img - lo) / np.where(hi > lo, hi - lo, 1.0)
    img = np.repeat(img, 3, axis=0) if img.shape[0] == 1 else img[:3]
    return (img.transpose(1, 2, 0) * 255).astype(np.uint8)


def heat_colors(values: np.ndarray, signed: bool) -> tuple[np.ndarray, np.ndarray]:
    """(H, W) map -> (H, W, 3) colours and (H, W) opacity: red for evidence for the target, blue against;
    an unsigned map in red alone. Opacity follows |value| over the map's 99th percentile (one hot pixel does not
    wash out the rest)."""
    top = float(np.percentile(np.abs(values), 99)) or float(np.abs(values).max()) or 1.0
    strength = np.clip(np.abs(values) / top, 0.0, 1.0)
    color = np.zeros((*values.shape, 3), dtype=np.float32)
    positive = values >= 0 if signed else np.ones_like(values, dtype=bool)
    color[positive] = (230, 30, 30)
    color[~positive] = (30, 80, 230)
    return color, strength


def overlay_png(image: np.ndarray, values: np.ndarray, path: Path, *, signed: bool) -> None:
    """The input and the input with the map over it, side by side, enlarged to about 224 px."""
    from PIL import Image

    base = _as_rgb(image).astype(np.float32)
    gray = base.mean(-1, keepdims=True).repeat(3, -1) * 0.6  # a dimmed grey input under a coloured map
    color, alpha = heat_colors(values, signed)
    mixed = gray * (1 - alpha[..., None]) + color * alpha[..., None]
    h, w = values.shape
    factor = max(1, SCALE_TO // max(h, w))
    panels = [Image.fromarray(base.astype(np.uint8)), Image.fromarray(np.clip(mixed, 0, 255).astype(np.uint8))]
    panels = [p.resize((w * factor, h * factor), Image.NEAREST) for p in panels]
    sheet = Image.new("RGB", (2 * w * factor + 8, h * factor), (255, 255, 255))
    sheet.paste(panels[0], (0, 0))
    sheet.paste(panels[1], (w * factor + 8, 0))
    sheet.save(path)


def _token_html(tokens: list[str], values: np.ndarray, signed: bool, *, stretch: bool = False) -> str:
    """Tokens as spans shaded by value; `stretch` shades from the row's minimum (rollout rows are all positive
    and close together: shading from zero would make every token look alike)."""
    values = np.asarray(values, dtype=np.float64)
    low = float(values.min()) if stretch and len(values) else 0.0
    top = float(np.abs(values - low).max()) if len(values) else 0.0
    top = top or 1.0
    spans = []
    for token, v in zip(tokens, values):
        alpha = min(1.0, abs(float(v) - low) / top)
        rgb = "230,30,30" if (v >= 0 or not signed) else "30,80,230"
        text = token[2:] if token.startswith("##") else token
        gap = "" if token.startswith("##") else " "
        spans.append(f'{gap}<span class="t" style="background:rgba({rgb},{alpha:.2f})" '
                     f'title="{html.escape(token)}: {float(v):+.4f}">{html.escape(text)}</span>')
    return "".join(spans).strip()


def tokens_html(path: Path, *, title: str, rows: list[dict], signed: bool, notes: list[str],
                warnings: list[str]) -> None:
    """One self-contained page: per row the prediction, the tokens coloured by attribution and, when computed,
    by attention rollout; each token's value on hover."""
    parts = [f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title><style>"
             "body{font-family:system-ui,sans-serif;max-width:60em;margin:2em auto;line-height:2}"
             ".t{padding:2px 1px;border-radius:3px}.row{border-bottom:1px solid #ddd;padding:.5em 0}"
             ".meta{color:#555;font-size:90%}.warn{color:#a40}</style></head><body>",
             f"<h1>{html.escape(title)}</h1>",
             "<p class='meta'>red: evidence for the explained label; blue: against"
             f"{'' if signed else ' (magnitudes only for this method)'}. Hover a token for its value.</p>"]
    parts += [f"<p class='meta'>{html.escape(n)}</p>" for n in notes]
    parts += [f"<p class='warn'>{html.escape(n)}</p>" for n in warnings]
    for i, row in enumerate(rows):
        parts.append(f"<div class='row'><div class='meta'>row {i}: predicted <b>{html.escape(str(row['predicted']))}"
                     f"</b>, explained <b>{html.escape(str(row['explained']))}</b></div>")
        parts.append(f"<div>{_token_html(row['tokens'], row['values'], signed)}</div>")
        if row.get("rollout") is not None:
            parts.append("<div class='meta'>attention rollout:</div>"
                         f"<div>{_token_html(row['tokens'], row['rollout'], False, stretch=True)}</div>")
        parts.append("</div>")
    parts.append("</body></html>")
    path.write_text("\n".join(parts), encoding="utf-8")


def attention_png(matrix: np.ndarray, path: Path) -> None:
    """An (L, L) attention matrix as a grey-scale image (dark = strong), 12 px per token."""
    from PIL import Image

    m = matrix / (matrix.max() or 1.0)
    img = Image.fromarray((255 * (1 - m)).astype(np.uint8))
    img.resize((12 * m.shape[1], 12 * m.shape[0]), Image.NEAREST).save(path)


__all__ = ["attention_png", "heat_colors", "overlay_png", "tokens_html"]
