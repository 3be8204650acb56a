"""Deep text recipes vs TF-IDF + logistic regression, measured in the same run on the same splits.

    PYTHONPATH=src DLFORGE_DATA=../shared/data python benchmarks/text_baselines.py [--threads 1] [--only spam]

For each recipe: the baseline (scikit-learn TfidfVectorizer(1-2 grams, sublinear tf, min_df 2) +
LogisticRegression(C=4)) is fitted on the recipe's training rows (train + val) and scored on its
official test rows; then the recipe trains and is scored on the same test rows. Prints a Markdown table.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np

import dlforge
from dlforge.data.prepare import read_table
from dlforge.recipe.io import load_recipe

ROOT = Path(__file__).resolve().parents[1]
RECIPES = {"text_lstm": "recipes/text_lstm.yaml", "text_transformer": "recipes/text_transformer.yaml",
           "spam": "recipes/spam.yaml"}


def baseline(recipe) -> dict:
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import accuracy_score, f1_score

    table = read_table(recipe)
    texts = [" ".join(str(table.columns[f.name][i]) for f in recipe.inputs if f.type == "text")
             for i in range(table.n_rows)]
    texts = np.array(texts, dtype=object)
    target = recipe.outputs[0].name
    y = np.array([str(v) for v in table.columns[target]])
    test = table.split == "test"
    started = time.perf_counter()
    vectorizer = TfidfVectorizer(ngram_range=(1, 2), sublinear_tf=True, min_df=2)
    x_train = vectorizer.fit_transform(texts[~test])
    model = LogisticRegression(C=4.0, max_iter=2000).fit(x_train, y[~test])
    pred = model.predict(vectorizer.transform(texts[test]))
    seconds = time.perf_counter() - started
    positive = sorted(set(y))[1]  # matches dlforge's inference for two non-boolean labels: the later sorted value
    return {"accuracy": accuracy_score(y[test], pred), "f1": f1_score(y[test], pred, pos_label=positive),
            "seconds": seconds, "positive": positive}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--only", nargs="*", default=list(RECIPES))
    parser.add_argument("--out", default="/tmp/dlforge-text-bench")
    args = parser.parse_args()
    rows = []
    for key in args.only:
        path = ROOT / RECIPES[key]
        overrides = [f"training.threads={args.threads}"] if args.threads else []
        recipe = load_recipe(path, overrides)
        base = baseline(recipe)
        started = time.perf_counter()
        run = dlforge.train(path, out=Path(args.out) / key, overrides=overrides, overwrite=True, progress=False)
        wall = time.perf_counter() - started
        test = run.metrics["test"]
        rows.append((key, base, test, run.metrics["train_seconds"], wall, run.metrics["epochs_run"]))
        print(f"{key}: baseline acc {base['accuracy']:.4f} f1 {base['f1']:.4f} | dlforge acc {test['accuracy']:.4f} "
              f"f1 {test['f1']:.4f} ({run.metrics['train_seconds']:.0f} s training)", flush=True)
    print("\n| recipe | TF-IDF+LR acc | TF-IDF+LR F1 | dlforge acc | dlforge F1 | dlforge train s (epochs) | wall s |")
    print("|---|---|---|---|---|---|---|")
    for key, base, test, seconds, wall, epochs in rows:
        print(f"| {RECIPES[key]} | {base['accuracy']:.4f} | {base['f1']:.4f} | {test['accuracy']:.4f} | "
              f"{test['f1']:.4f} | {seconds:.0f} ({epochs}) | {wall:.0f} |")


if __name__ == "__main__":
    main()
