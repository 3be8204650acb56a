"""The audit's recall and precision on the user's own data, measured by planting known problems in a copy.

- Flipped labels: `flip_fraction` of the checked rows get another class (uniformly among the others); the quick
  model is refitted out of fold on the flipped labels (same features) and cleanlab runs again.
- Cross-split duplicates: k training rows are copied into the test split with small edits a real copy has —
  text upper-cased with an extra space, numbers changed in the 9th digit, image files re-encoded as JPEG at
  quality 75 after a 90% resize, image arrays with +1 on every pixel — and the duplicate check runs again on the
  original fingerprints plus the copies'.
Recall = planted found / planted. Precision = planted found / findings new in the copy (findings the original
already had are not counted against it; the raw share is given too).
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np
import pandas as pd

from dlforge.audit import duplicates as dup
from dlforge.audit.columns import missing_mask


def _edited_copies(data, rows: np.ndarray, folder: Path, compared: list[str]) -> dict[str, np.ndarray]:
    """The cells of `rows` in the `compared` columns, edited as a copy made by hand or by a pipeline would be."""
    from dlforge.audit.columns import as_numbers

    out = {}
    for name in compared:
        values = data.inputs[name]
        kind, cells = data.kinds[name], values[rows]
        if kind == "image" and values.ndim == 1:
            out[name] = np.array([_reencode(str(p), data.table.root, folder / f"copy_{i}.jpg")
                                  for i, p in enumerate(cells.tolist())], dtype=object)
        elif kind == "image":
            out[name] = np.clip(cells.astype(np.int16) + 1, 0, 255).astype(values.dtype)
        elif values.ndim == 1 and kind == "number":
            numbers = as_numbers(cells) * (1 + 1e-9)
            out[name] = numbers if values.dtype.kind in "biuf" else np.array(
                [None if np.isnan(x) else repr(x) for x in numbers.tolist()], dtype=object)
        elif values.ndim == 1 and kind in ("text", "category"):
            missing = missing_mask(cells)
            out[name] = np.array([c if m else f" {str(c).upper()} " for c, m in zip(cells.tolist(), missing)],
                                 dtype=object)
        else:
            out[name] = cells.copy()
    return out


def _reencode(path: str, root: str | None, target: Path) -> str:
    from PIL import Image

    source = Path(path) if Path(path).is_absolute() or root is None else Path(root) / path
    with Image.open(source) as img:
        rgb = img.convert("RGB")
        smaller = rgb.resize((max(1, round(rgb.width * 0.9)), max(1, round(rgb.height * 0.9))),
                             Image.Resampling.BILINEAR)
        smaller.save(target, quality=75)
    return str(target)


def planted_duplicates(data, prints: dup.Fingerprints, compared: list[str], k: int, rng) -> dict:
    """Copies of k training rows in the other split; `compared`: the columns the fingerprints cover."""
    train = np.flatnonzero(data.split == "train")
    other = "test" if (data.split == "test").any() else "val"
    rows = rng.choice(train, size=min(k, len(train)), replace=False)
    clean_group = dup.groups(prints.near, dup.image_pairs(prints.hashes, prints.thumbs)
                             if prints.hashes is not None else [])
    clean = set(dup.cross_split(clean_group, data.split)["leaked_rows"])
    with tempfile.TemporaryDirectory(prefix="dlforge-audit-") as folder:
        copies = _edited_copies(data, rows, Path(folder), compared)
        new = dup.fingerprints(copies, data.kinds, data.table.root)
    near = np.concatenate([prints.near, new.near])
    pairs = []
    if prints.hashes is not None:
        pairs = dup.image_pairs(np.concatenate([prints.hashes, new.hashes]), np.concatenate([prints.thumbs, new.thumbs]))
    group = dup.groups(near, pairs)
    split = np.concatenate([data.split, np.full(len(rows), other, dtype=object)])
    flagged = set(dup.cross_split(group, split)["leaked_rows"])
    planted = set(range(len(data.split), len(split)))
    found = len(flagged & planted)
    new_flags = flagged - clean
    return {"planted": len(planted), "found": found, "flagged_new": len(new_flags)}


def planted_flips(features, checked: np.ndarray, clean_flagged: np.ndarray, labels: np.ndarray,
                  fraction: float, rng, seed: int) -> dict:
    """`labels`: class codes of the `checked` rows (0..K-1)."""
    from dlforge.audit.labels import label_issues, out_of_fold_probabilities

    n_classes = int(labels.max()) + 1
    k = max(1, int(round(fraction * len(labels))))
    rows = rng.choice(len(labels), size=k, replace=False)
    flipped = labels.copy()
    flipped[rows] = (labels[rows] + rng.integers(1, n_classes, size=k)) % n_classes
    sub = features.x.iloc[checked] if isinstance(features.x, pd.DataFrame) else features.x[checked]
    probabilities = out_of_fold_probabilities(type(features)(sub, features.model, features.description), flipped,
                                              seed=seed)
    flagged, _ = label_issues(flipped, probabilities)
    flagged, planted = set(flagged.tolist()), set(rows.tolist())
    found = len(flagged & planted)
    return {"planted": k, "found": found, "flagged": len(flagged), "flagged_new": len(flagged - set(clean_flagged.tolist()))}


def _total(runs: list[dict], seeds: list[int]) -> dict:
    planted, found = sum(r["planted"] for r in runs), sum(r["found"] for r in runs)
    new = sum(r["flagged_new"] for r in runs)
    total = {"planted": planted, "found": found, "recall": round(found / planted, 4) if planted else 0.0,
             "precision": round(found / new, 4) if new else 1.0, "seeds": seeds,
             "recall_per_seed": [round(r["found"] / r["planted"], 4) for r in runs]}
    if runs and "flagged" in runs[0]:
        flagged = sum(r["flagged"] for r in runs)
        total["precision_raw"] = round(found / flagged, 4) if flagged else 1.0
        total["flagged"] = flagged
    total["flagged_new"] = new
    return total


def measure(data, prints: dup.Fingerprints, *, compared: list[str], features, checked: np.ndarray, clean_flagged: np.ndarray,
            target_codes: np.ndarray, present: np.ndarray, seeds: int, flip_fraction: float,
            duplicate_rows: int | None, seed: int) -> dict:
    """Recall and precision of the duplicate and label-error checks on planted problems, over `seeds` copies."""
    seed_list = [seed + s for s in range(seeds)]
    n_train = int((data.split == "train").sum())
    k = duplicate_rows or max(5, min(500, n_train // 100))
    result = {"how": "problems planted in a copy of the data; precision counts only findings new in the copy"}
    if n_train and ((data.split == "test").any() or (data.split == "val").any()):
        runs = [planted_duplicates(data, prints, compared, k, np.random.default_rng(s)) for s in seed_list]
        result["cross_split_duplicates"] = _total(runs, seed_list)
    if features is not None and len(checked) and data.task == "classification":
        # codes of the checked rows, renumbered 0..K-1 as the label check saw them
        position = pd.Series(np.arange(len(present)), index=present)
        labels = pd.factorize(target_codes[position[checked].to_numpy()], sort=True)[0]
        # the folds of the clean run (seed), so that a new finding is due to the flips, not to other folds
        runs = [planted_flips(features, checked, clean_flagged, labels, flip_fraction, np.random.default_rng(s), seed)
                for s in seed_list]
        result["flipped_labels"] = {**_total(runs, seed_list), "fraction": flip_fraction}
    return result
