"""A teacher-labelled transfer set for distilling a text teacher (Tang et al. 2019, "Distilling task-specific
knowledge from BERT into simple neural networks", section 3.3).

Soft targets on the training rows alone add little: the student sees the same 9k sentences with slightly richer
labels. Tang et al. grow the transfer set with rule-based rewrites of the training texts that the teacher then
labels: each word masked with probability `p_mask` (the teacher's [MASK] token: BERT-style teachers know it, a
from-scratch one reads [UNK]), and with probability `p_ngram` the text cut to a random n-gram of 1-5 words. Their
third rule, POS-guided word replacement, needs a part-of-speech tagger that dlforge does not ship; it is left out.
Rewrites equal to their own text or to another rewrite are dropped.

The rewrites depend only on the training texts and `seed` (never on the student's seed), so the teacher labels them
once: their logits are cached beside the training rows' (safetensors, keyed by the teacher, the texts' digest and
the rule settings) and every later student, temperature or alpha reads them back. The teacher runs on
length-sorted batches (a transformer teacher pads each batch to its longest text only).
"""

from __future__ import annotations

import hashlib

import numpy as np
import torch

from dlforge.core.errors import DlforgeError
from dlforge.core.files import atomic_path
from dlforge.data.features.base import is_missing
from dlforge.training.feature_cache import cache_root

P_MASK, P_NGRAM, MAX_NGRAM = 0.1, 0.25, 5  # Tang et al.'s p_mask, p_ng and n-gram lengths 1..5


def rewrite_texts(texts: list[str], copies: int, *, mask_token: str, seed: int = 0, p_mask: float = P_MASK,
                  p_ngram: float = P_NGRAM) -> list[str]:
    """Up to `copies` rewrites of every text (masked words, sometimes cut to an n-gram), new texts only."""
    rng = np.random.default_rng(seed)
    seen = set(texts)
    out = []
    for text in texts:
        words = text.split()
        if not words:
            continue
        for _ in range(copies):
            mask = rng.random(len(words)) < p_mask
            new = [mask_token if m else w for w, m in zip(words, mask)]
            if rng.random() < p_ngram:
                n = int(rng.integers(1, MAX_NGRAM + 1))
                start = int(rng.integers(0, max(1, len(new) - n + 1)))
                new = new[start:start + n]
            rewritten = " ".join(new)
            if rewritten not in seen:
                seen.add(rewritten)
                out.append(rewritten)
    return out


def by_length_logits(predictor, name: str, texts, batch: int = 256) -> dict[str, torch.Tensor]:
    """The teacher's logits on `texts`, run in batches of similar length, returned in the texts' order (a
    transformer teacher trims each batch to its longest text: random batches would pay for the longest of all)."""
    ids = predictor.encode_inputs({name: np.asarray(texts, dtype=object)})[name]
    lengths = (ids != 0).sum(1)
    order = torch.argsort(lengths, descending=True, stable=True)
    parts: dict[str, list] = {}
    for start in range(0, len(order), batch):
        rows = order[start:start + batch]
        width = int(lengths[rows].max())
        for out, value in predictor.logits({name: ids[rows, :width]}).items():
            parts.setdefault(out, []).append(value.float())
    inverse = torch.empty_like(order)
    inverse[order] = torch.arange(len(order))
    return {out: torch.cat(values)[inverse].contiguous() for out, values in parts.items()}


def transfer_set(data, copies: int, *, seed: int = 0, say=lambda text: None
                 ) -> tuple[str, list[str], dict[str, torch.Tensor], bool]:
    """(text input name, rewritten texts, the teacher's logits on them, cache hit) for a one-text-input teacher."""
    from safetensors.torch import load_file, save_file

    signature = data.predictor.signature["inputs"]
    names = list(signature)
    if len(names) != 1 or signature[names[0]]["type"] != "text":
        raise DlforgeError(f"a transfer set rewrites texts, and the teacher reads {names} "
                           f"({[s['type'] for s in signature.values()]})", where="--transfer",
                           hint="use --transfer 0 for a teacher that is not a one-text-input model")
    name = names[0]
    tokenizer = getattr(data.predictor.inputs[name], "tokenizer_", None)
    mask_token = "[MASK]" if tokenizer is not None and tokenizer.token_to_id("[MASK]") is not None else "[UNK]"
    train = ["" if is_missing(t) else str(t) for t in np.asarray(data.part_table("train").columns[name]).tolist()]
    texts = rewrite_texts(train, copies, mask_token=mask_token, seed=seed)
    if not texts:
        raise DlforgeError("the training texts gave no rewrites", where="--transfer", hint="use --transfer 0")
    meta = data.predictor.meta
    digest = hashlib.sha256("\n".join(texts).encode()).hexdigest()
    key = hashlib.sha256("|".join([meta.get("content_sha256") or "", (meta.get("weights") or {}).get("sha256", ""),
                                   digest, f"{P_MASK}/{P_NGRAM}/{MAX_NGRAM}"]).encode()).hexdigest()[:32]
    path = cache_root().parent / "teacher_logits" / f"transfer-{key}.safetensors"
    if path.is_file():
        try:
            cached = load_file(str(path))
            if cached and all(len(v) == len(texts) for v in cached.values()):
                return name, texts, cached, True
        except Exception:  # a damaged cache file is recomputed, never trusted
            pass
    say(f"the teacher labels {len(texts):,} rewritten training texts (once; cached for later students)")
    logits = by_length_logits(data.predictor, name, texts)
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp:
        save_file(logits, str(tmp))
    return name, texts, logits, False


def teacher_targets(signature: dict, logits: dict[str, torch.Tensor], like: dict[str, torch.Tensor]
                    ) -> dict[str, torch.Tensor]:
    """Hard targets for rows only the teacher labelled: its own decision, shaped and typed as the label targets
    in `like` (the training split's), so the label term of the loss reads them like any row's."""
    out = {}
    for name, value in logits.items():
        kind = signature["outputs"][name]["type"]
        target = like[name]
        if kind not in ("category", "binary", "multilabel"):
            raise DlforgeError(f"a transfer set needs the teacher's decisions, and output '{name}' is {kind}",
                               where="--transfer", hint="use --transfer 0 for a teacher with number outputs")
        if kind == "category":
            decided = value.argmax(-1)
        else:
            decided = value > 0
        out[name] = decided.reshape((len(value), *target.shape[1:])).to(target.dtype)
    return out


__all__ = ["by_length_logits", "rewrite_texts", "teacher_targets", "transfer_set"]
