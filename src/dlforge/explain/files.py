"""An Explanation written to a folder: explanation.json (the summary and the sanity numbers), per image input a
PNG per row and the raw maps in .npz, per text input a highlighted HTML page (and attention maps in .npz and
PNG when asked), per table one CSV of attributions per row and column. No pickle: npz of plain arrays."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np

from dlforge.explain.render import attention_png, overlay_png, tokens_html


def save(explanation, out: Path) -> list[Path]:
    out.mkdir(parents=True, exist_ok=True)
    written: list[Path] = []
    e = explanation
    columns = [s.name for s in e.spaces if s.kind == "column"]
    for s in e.spaces:
        if s.kind == "image":
            path = out / f"{s.name}.npz"
            np.savez_compressed(path, attributions=e.attributions[s.name].astype(np.float32),
                                maps=e.scores[s.name].astype(np.float32))
            written.append(path)
            for i in range(len(e.predicted)):
                png = out / f"{s.name}_{i}.png"
                overlay_png(e.images[s.name][i], e.scores[s.name][i], png, signed=e.signed)
                written.append(png)
        elif s.kind == "tokens":
            rows = []
            attention = e.attention.get(s.name)
            for i, tokens in enumerate(e.tokens[s.name]):
                rows.append({"predicted": e.predicted[i], "explained": e.explained[i], "tokens": tokens,
                             "values": e.scores[s.name][i][:len(tokens)],
                             "rollout": attention["relevance"][i][:len(tokens)] if attention else None})
            page = out / f"{s.name}.html"
            notes = [f"sanity check (model randomisation, Adebayo et al. 2018): Spearman {e.sanity['spearman']:.2f} "
                     f"between this map and the map of the model with its top layers re-initialised (low is good)"
                     ] if e.sanity else []
            tokens_html(page, title=f"{e.method} on '{s.name}' ({e.output})", rows=rows, signed=e.signed,
                        notes=notes, warnings=e.warnings)
            written.append(page)
            path = out / f"{s.name}.npz"
            np.savez_compressed(path, maps=e.scores[s.name].astype(np.float32))
            written.append(path)
            if attention:
                path = out / f"{s.name}_attention.npz"
                np.savez_compressed(path, maps=attention["maps"].astype(np.float32),
                                    rollout=attention["rollout"].astype(np.float32),
                                    relevance=attention["relevance"].astype(np.float32))
                written.append(path)
                for i, tokens in enumerate(e.tokens[s.name]):
                    png = out / f"{s.name}_rollout_{i}.png"
                    n = len(tokens)
                    attention_png(attention["rollout"][i][:n, :n], png)
                    written.append(png)
        elif s.kind == "series":
            path = out / f"{s.name}.npz"
            np.savez_compressed(path, attributions=e.attributions[s.name].astype(np.float32),
                                maps=e.scores[s.name].astype(np.float32))
            written.append(path)
    if columns:
        path = out / "attributions.csv"
        with path.open("w", newline="", encoding="utf-8") as handle:
            writer = csv.writer(handle)
            writer.writerow(["row", f"predicted_{e.output}", f"explained_{e.output}", *columns,
                             *[f"attribution_{c}" for c in columns]])
            for i in range(len(e.predicted)):
                writer.writerow([i, e.predicted[i], e.explained[i], *[e.values[c][i] for c in columns],
                                 *[f"{float(e.scores[c][i]):.6g}" for c in columns]])
        written.append(path)
    summary = out / "explanation.json"
    summary.write_text(json.dumps({**e.summary(), "files": [p.name for p in written]}, indent=2, default=str) + "\n")
    written.append(summary)
    return written


__all__ = ["save"]
