"""`dlforge init`'s choice for free-text columns: which encoder, configured how, trained how, and why.

The pretrained MiniLM, fine-tuned, when its packages are installed and fine-tuning is affordable (on a GPU, or on a
CPU when its few epochs are estimated under MINILM_CPU_MINUTES); otherwise the from-scratch encoder that holds up on
small data: a bag of word and word-pair embeddings (fastText, `text:ngram`). Each choice comes with the phrase
that `init` writes as the column's comment and `train DATA --target` prints in its summary.
Figures: benchmarks/text_newcomer.md (and benchmarks/README.md, "No-recipe text").
"""

from __future__ import annotations

import numpy as np

from dlforge.data.profile import Choice
from dlforge.data.table import Table


def choose_text_encoders(table: Table, texts: list[Choice], pretrained: bool | None) -> None:
    """Give each free-text column in `texts` its encoder entry (`choice.extra`) and the reason (`choice.why`)."""
    allowed, not_why = pretrained_text_fits(table, [c.name for c in texts], pretrained)
    for choice in texts:
        entry, why = text_encoder_choice(table.columns[choice.name], pretrained=allowed)
        why = f"{why}; {not_why}" if not_why else why
        choice.extra, choice.why = {**(choice.extra or {}), **entry}, f"{choice.why}; {why}"


def pretrained_text_installed() -> bool:
    """Whether the pretrained text encoder (MiniLM) can train here: its code and weight packages are installed
    (found without importing them: transformers alone takes seconds to import)."""
    import importlib.util

    from dlforge.core.assets import BACKBONES

    spec = BACKBONES["minilm"]
    return all(importlib.util.find_spec(p.module) is not None for p in (*spec.code, *spec.weights))


# Fine-tuning MiniLM on CPU: about 1,000 word pieces a second (rt_snippets, 2 epochs of 9,181 texts in 503 s on
# 2 cores, benchmarks/README.md). When the whole fine-tuning (MINILM_EPOCHS) is estimated over MINILM_CPU_MINUTES on a
# CPU, init picks the n-gram encoder: a newcomer's first run should not take an hour.
MINILM_CPU_PIECES_PER_SECOND = 1_000
MINILM_EPOCHS = 3
MINILM_CPU_MINUTES = 30


def _pieces_per_text(values) -> float:
    """Mean word pieces a text costs MiniLM: about 1.4 pieces a word plus [CLS]/[SEP], cut at the chosen length."""
    words = np.array([len(str(v).split()) for v in values[:2000].tolist()] or [1], dtype=float)
    return float(np.minimum(_minilm_length(words), 1.4 * words + 2).mean())


def _minilm_length(words) -> int:
    return int(min(256, max(32, 2 ** np.ceil(np.log2(1.4 * np.percentile(words, 90) + 2)))))


def minilm_epoch_minutes(table: Table, names: list[str]) -> float:
    """Estimated CPU minutes of one fine-tuning epoch of MiniLM over the text columns `names`: the rows that train
    (not the data's own test rows) times the pieces each text costs, at the measured CPU rate."""
    rows = table.n_rows if table.split is None else int((table.split != "test").sum())
    pieces = sum(rows * _pieces_per_text(table.columns[n]) for n in names)
    return pieces / MINILM_CPU_PIECES_PER_SECOND / 60


def pretrained_text_fits(table: Table, names: list[str], pretrained: bool | None) -> tuple[bool, str]:
    """Whether the text columns get the pretrained encoder, and why (one phrase; empty when there is nothing to say).

    None (the default): MiniLM when its packages are installed and fine-tuning is affordable: on a GPU, or on a CPU
    when its MINILM_EPOCHS are estimated under MINILM_CPU_MINUTES (else the n-gram bag, saying how long MiniLM would
    take).
    True: MiniLM whenever installed. False (--no-pretrained): the n-gram bag."""
    if not names:
        return False, ""
    if pretrained is False:
        return False, "as --no-pretrained asks"
    if not pretrained_text_installed():
        return False, ""
    import torch

    if torch.cuda.is_available():
        return True, "on the GPU"
    minutes = minilm_epoch_minutes(table, names)
    if pretrained is None and minutes * MINILM_EPOCHS > MINILM_CPU_MINUTES:
        rows = table.n_rows if table.split is None else int((table.split != "test").sum())
        return False, (f"minilm is installed, but fine-tuning it on {rows} texts would take "
                       f"{_minutes(minutes * MINILM_EPOCHS)} ({MINILM_EPOCHS} epochs of {_minutes(minutes)}) on this "
                       "CPU, no GPU; write encoder: {name: minilm} to use it")
    return True, f"{_minutes(minutes)} per epoch ({MINILM_EPOCHS} at most) on this CPU, no GPU"


def _minutes(minutes: float) -> str:
    return "under a minute" if minutes < 1 else f"about {minutes:.0f} min"


# The from-scratch bag is cross-fitted (training.cross_fit, as the tabular default does on small tables): 5 bags,
# each trained on 4/5 of the train+val rows and early-stopped on the other fifth, their probabilities averaged.
# Why: one bag memorises rare n-grams within 2 epochs, so its best epoch is picked on the noise of a 10% validation
# share, and that share never trains. rt_snippets, seeds 0-2: one bag 0.7820 / 0.7907 / 0.7813 against 0.7840 for
# TF-IDF + logistic regression (which trains on every row); cross-fitted, benchmarks/text_newcomer.md. It costs 5
# trainings of a cheap model; above CROSS_FIT_WORDS words of training text, one bag and its validation share.
CROSS_FIT_FOLDS = 5
CROSS_FIT_WORDS = 2_000_000


def training_words(table: Table, names: list[str]) -> int:
    """Words of training text (the rows that train or validate, not the data's own test rows) in columns `names`."""
    rows = table.n_rows if table.split is None else int((table.split != "test").sum())
    return int(sum(rows * np.mean([len(str(v).split()) for v in table.columns[n][:2000].tolist()] or [0])
                   for n in names))


def text_encoder_choice(values, *, pretrained: bool) -> tuple[dict, str]:
    """The encoder for a free-text column, and why: fine-tuned MiniLM when installed (it knows English before it
    sees the data), else a bag of uni- and bigrams (fastText), the from-scratch encoder that holds up on small data.
    Figures: benchmarks/README.md ("no-recipe text")."""
    words = np.array([len(str(v).split()) for v in values[:2000].tolist() if isinstance(v, str)] or [1])
    if pretrained:
        length = _minilm_length(words)
        return ({"preprocessing": {"max_length": length},
                 "encoder": {"name": "minilm", "freeze": "none", "backbone_lr_mult": 0.1, "pooling": "mean"}},
                f"encoder minilm (pretrained, installed): it has read English before it sees these texts, so on a "
                f"few thousand of them it beats any model learned from scratch (rt_snippets: 0.84 vs 0.78 for "
                f"TF-IDF + logistic regression); fine-tuned at a tenth of the head's rate with by-length batches, "
                f"{length} word pieces (90% of texts fit)")
    length = int(min(512, max(32, 1.4 * np.percentile(words, 95) + 1)))
    return ({"preprocessing": {"vocab_size": 20000, "max_length": length},
             "encoder": {"name": "ngram", "dim": 32, "buckets": 50000, "ngrams": 2, "dropout": 0.2}},
            "encoder ngram (bag of words and word pairs, fastText-style): strong on small data from scratch"
            + ("" if pretrained_text_installed() else "; the pretrained minilm does better: pip install "
               "'dlforge[pretrained]'"))


def text_training(inputs: list[Choice], table: Table) -> list[str] | None:
    """Training settings for a recipe with free text (None: the tabular defaults): fine-tuning a pretrained encoder
    wants few epochs at a small, decaying rate (as recipes/text_minilm.yaml); the n-gram bag a small rate with weight
    decay, and a cross-fit of CROSS_FIT_FOLDS bags up to CROSS_FIT_WORDS words of training text."""
    texts = [c for c in inputs if c.kind == "text"]
    encoders = {(c.extra or {}).get("encoder", {}).get("name") for c in texts}
    if "minilm" in encoders:
        return [f"  epochs: {MINILM_EPOCHS}  # fine-tuning: a few passes; early stopping keeps the best",
                "  batch_size: 32",
                "  optimizer: {name: adamw, lr: 0.0003, weight_decay: 0.01}",
                "  schedule: {name: cosine, warmup_epochs: 0.1}",
                "  early_stopping: {metric: val.loss, patience: 1}",
                "  sampling: auto  # by-length batches: rows of similar length together, little padding"]
    if "ngram" in encoders:  # it memorises rare n-grams within 2 epochs: a small rate, decay, stop on the loss
        lines = ["  epochs: 15  # a ceiling: early stopping ends each bag (rt_snippets after 5 epochs, spam_assassin 7-8)",
                 "  batch_size: 32",
                 "  optimizer: {name: adamw, lr: 0.001, weight_decay: 0.1}",
                 "  schedule: {name: cosine}",
                 "  early_stopping: {metric: val.loss, patience: 3}"]
        words = training_words(table, [c.name for c in texts])
        if words <= CROSS_FIT_WORDS:
            lines.append(f"  cross_fit: {CROSS_FIT_FOLDS}  # {words:,} words of text: {CROSS_FIT_FOLDS} bags, each "
                         "early-stopped on its own fifth of the train+val rows, probabilities averaged: every row "
                         "trains, and the best epoch is not picked on one small validation share")
        else:
            lines.append(f"  # one bag: {words:,} words of text, over the {CROSS_FIT_WORDS:,} up to which init "
                         f"cross-fits {CROSS_FIT_FOLDS} bags (training.cross_fit)")
        return lines
    return None
