"""Likely label errors by confident learning (Northcutt et al. 2021, cleanlab's `find_label_issues`).

A quick scikit-learn model gives every row a probability per class from the folds it was not trained on; a row
whose given label the model finds much less likely than another, beyond the noise rate the confident joint
estimates for that pair of classes, is a likely error. The model follows the data:
- tables: HistGradientBoosting (categories as native categorical features, missing values as they are);
- text (any free-text column): TF-IDF words and character n-grams, one-hot categories, scaled numbers, logistic
  regression;
- images: ImageNet MobileNetV2 features when its weights are installed and the images are files (a few hundred
  photos a second on 2 cores), else 16x16 grey pixels; logistic regression on them.
Cost on 2 cores: adult (48,842 rows, 14 columns) about 15 s for the 4 folds.

Threads: scikit-learn's OpenMP threads spin while they wait for each other, so on a machine already busier than
its cores one HistGradientBoosting fit on adult took 61 s with 2 threads and 3.6 s with 1 (load 18 on 2 cores,
measured here). The quick models run on the cores left idle by the load average, at least one.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from dlforge.audit.columns import as_numbers
from dlforge.core.errors import DlforgeError
from dlforge.audit.columns import missing_mask

FOLDS = 4
IMAGE_FEATURE_LIMIT = 20_000  # above this many image files, pixels instead of MobileNetV2 features (time)


@dataclass
class Features:
    """The matrix the quick model learns from, and which model suits it."""

    x: object  # ndarray, DataFrame or scipy sparse matrix
    model: str  # "hist_gradient_boosting" | "logistic_regression"
    description: str


def require_sklearn():
    try:
        import sklearn  # noqa: F401
    except ImportError:
        raise DlforgeError("the audit needs scikit-learn and cleanlab, which are not installed",
                           hint="pip install 'dlforge[audit]'") from None


def image_features(images: np.ndarray, root: str | None) -> tuple[np.ndarray, str]:
    """(n, d) features per image: MobileNetV2 pooled features for image files when the weights are installed, else
    16x16 grey pixels scaled to 0..1."""
    from dlforge.audit.duplicates import grey_thumbnail

    if images.ndim == 1 and len(images) <= IMAGE_FEATURE_LIMIT:
        try:
            return _mobilenet_features(images, root), "ImageNet MobileNetV2 features (1280)"
        except DlforgeError:
            pass
    pixels = np.stack([grey_thumbnail(images[i], root, (16, 16)) for i in range(len(images))]) / 255.0
    return np.nan_to_num(pixels.reshape(len(images), -1)), "16x16 grey pixels"


def _mobilenet_features(paths: np.ndarray, root: str | None) -> np.ndarray:
    import torch

    from dlforge.core.assets import mobilenet_v2_weights
    from dlforge.data.images.files import decode_file, resolve_paths
    from dlforge.models.backbones.mobilenet_v2 import MobileNetV2

    weights = mobilenet_v2_weights(where="audit")
    net = MobileNetV2()
    net.load_state_dict(torch.load(weights, map_location="cpu", weights_only=True))
    net.eval()
    torch.set_num_threads(idle_cores())
    mean = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
    std = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
    resolved = resolve_paths(paths, root)
    out = []
    with torch.inference_mode():
        for start in range(0, len(resolved), 64):
            batch = []
            for item in resolved[start:start + 64].tolist():
                try:
                    batch.append(decode_file(item, channels=3, size=(224, 224), fit="pad"))
                except (OSError, ValueError):
                    batch.append(np.full((224, 224, 3), 255, dtype=np.uint8))
            x = torch.from_numpy(np.stack(batch)).permute(0, 3, 1, 2).float().div(255)  # (B, 3, 224, 224)
            out.append(net.forward_features((x - mean) / std).mean(dim=(2, 3)).numpy())  # (B, 1280)
    return np.concatenate(out)


def robust_scale(matrix: np.ndarray) -> np.ndarray:
    """(x - median) / IQR per column, clipped to [-5, 5], missing as 0: one outlier (1e6) would otherwise squash a
    z-scored column to zero everywhere else and hide it from a linear model."""
    median = np.nanmedian(matrix, axis=0)
    spread = np.nanpercentile(matrix, 75, axis=0) - np.nanpercentile(matrix, 25, axis=0)
    spread = np.where(spread > 0, spread, np.nanstd(matrix, axis=0) + 1e-9)
    return np.clip(np.nan_to_num((matrix - median) / spread), -5, 5)


def build_features(columns: dict[str, np.ndarray], kinds: dict[str, str], root: str | None = None) -> Features | None:
    """The quick model's inputs from the input columns, or None when no column is usable."""
    images = [n for n, k in kinds.items() if k == "image"]
    if images:
        x, what = image_features(columns[images[0]], root)
        x = (x - x.mean(0)) / (x.std(0) + 1e-6)
        return Features(x, "logistic_regression", f"{what} of '{images[0]}'")
    texts = [n for n, k in kinds.items() if k == "text"]
    categories = [n for n, k in kinds.items() if k == "category" and columns[n].ndim == 1]
    numbers = [n for n, k in kinds.items() if k == "number" and columns[n].ndim == 1]
    if texts:
        from scipy import sparse
        from sklearn.feature_extraction.text import TfidfVectorizer
        from sklearn.preprocessing import OneHotEncoder

        blocks = []
        for name in texts:
            text = pd.Series(columns[name], dtype=object).where(~missing_mask(columns[name]), "").astype(str)
            blocks.append(TfidfVectorizer(ngram_range=(1, 2), min_df=2, max_features=50_000,
                                          sublinear_tf=True).fit_transform(text))
        if categories:
            frame = pd.DataFrame({n: [str(v) for v in columns[n].tolist()] for n in categories})
            blocks.append(OneHotEncoder(handle_unknown="ignore", min_frequency=5).fit_transform(frame))
        if numbers:
            blocks.append(sparse.csr_matrix(robust_scale(np.column_stack([as_numbers(columns[n]) for n in numbers]))))
        return Features(sparse.hstack(blocks).tocsr(), "logistic_regression",
                        f"TF-IDF of {', '.join(texts)}" + (" + other columns" if categories or numbers else ""))
    if not categories and not numbers:
        return None
    frame = pd.DataFrame({n: as_numbers(columns[n]) for n in numbers})
    for name in categories:
        # HistGradientBoosting takes at most 255 categories per feature; the rarest share one code past that.
        values = pd.Series(columns[name], dtype=object).where(~missing_mask(columns[name]))
        top = values.value_counts().index[:254]
        frame[name] = pd.Categorical(values.where(values.isin(top), "\x00other"))
    return Features(frame, "hist_gradient_boosting", f"{len(numbers)} number and {len(categories)} category columns")


def idle_cores() -> int:
    """Cores not already busy by the 1-minute load average (at least 1)."""
    import os

    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    try:
        load = os.getloadavg()[0]
    except OSError:
        load = 0.0
    return max(1, min(cores, cores - int(round(load))))


def out_of_fold_probabilities(features: Features, labels: np.ndarray, *, seed: int = 0) -> np.ndarray:
    """(n, K) probabilities for class codes 0..K-1, each row's from the model trained without its fold."""
    from threadpoolctl import threadpool_limits

    with threadpool_limits(limits=idle_cores()):
        return _out_of_fold(features, labels, seed)


def _out_of_fold(features: Features, labels: np.ndarray, seed: int) -> np.ndarray:
    from sklearn.model_selection import StratifiedKFold

    n_classes = int(labels.max()) + 1
    folds = min(FOLDS, int(np.bincount(labels).min()))
    probabilities = np.zeros((len(labels), n_classes))
    x = features.x
    for train, test in StratifiedKFold(folds, shuffle=True, random_state=seed).split(np.zeros(len(labels)), labels):
        model = _model(features.model, seed)
        part = x.iloc[train] if isinstance(x, pd.DataFrame) else x[train]
        model.fit(part, labels[train])
        held = x.iloc[test] if isinstance(x, pd.DataFrame) else x[test]
        probabilities[np.ix_(test, model.classes_)] = model.predict_proba(held)
    return probabilities


def _model(name: str, seed: int):
    if name == "hist_gradient_boosting":
        from sklearn.ensemble import HistGradientBoostingClassifier

        return HistGradientBoostingClassifier(max_iter=100, early_stopping=False, categorical_features="from_dtype",
                                              random_state=seed)
    from sklearn.linear_model import LogisticRegression

    return LogisticRegression(max_iter=500, C=1.0)


def label_issues(labels: np.ndarray, probabilities: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(rows, self-confidence) of likely label errors, least confident first (cleanlab, prune by noise rate)."""
    try:
        from cleanlab.filter import find_label_issues
    except ImportError:
        raise DlforgeError("finding label errors needs cleanlab, which is not installed",
                           hint="pip install 'dlforge[audit]'") from None
    ranked = find_label_issues(labels, probabilities, filter_by="prune_by_noise_rate",
                               return_indices_ranked_by="self_confidence", n_jobs=1)
    ranked = np.asarray(ranked, dtype=np.int64)
    return ranked, probabilities[ranked, labels[ranked]]
