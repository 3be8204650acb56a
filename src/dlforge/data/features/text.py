"""Text columns: a subword tokenizer (Hugging Face `tokenizers`) trained on the training split, to padded ids.

Every text becomes `[CLS] tokens…` padded with [PAD] (id 0) to the longest text of the split, at most
`max_length`. Texts cut at `max_length` are counted (`truncated`), as are empty or missing ones
(`empty`: they keep only [CLS], so the model still sees a row). The tokenizer's own JSON is the state,
so the artifact needs no pickle and no vocabulary file beside model.json. Training needs `tokenizers`;
loading does not (plain_tokenizer.py applies the saved pipeline when it is missing).
"""

from __future__ import annotations

import json

import numpy as np
import torch
from pydantic import Field

from dlforge.data.features.base import Feature, input_features, is_missing, rows_preview
from dlforge.data.pretrained_text import PRETRAINED_TEXT, encode_pretrained, pretrained_tokenizer
from dlforge.core.errors import DataError
from dlforge.data.features.plain_tokenizer import PlainTokenizer
from dlforge.data.features.wire import InputKind, Text, input_kinds

PAD, UNK, CLS = "[PAD]", "[UNK]", "[CLS]"
SPECIAL = [PAD, UNK, CLS]  # ids 0, 1, 2: trainers add special tokens first, in this order


def as_texts(values: np.ndarray, *, name: str, where: str) -> tuple[list[str], np.ndarray]:
    """Values as str, with None/NaN as ''; bytes must be UTF-8 (a clear error names the row otherwise)."""
    texts, empty = [], np.zeros(len(values), dtype=bool)
    for i, v in enumerate(values.tolist()):
        if is_missing(v):
            v = ""
        elif isinstance(v, (bytes, bytearray)):
            try:
                v = v.decode("utf-8")
            except UnicodeDecodeError as exc:
                raise DataError(f"text in '{name}' row {i} is not UTF-8 (byte {exc.start}: {v[exc.start:exc.start + 1]!r})",
                                where=where, hint="decode the data to UTF-8 first (e.g. iconv -f latin1 -t utf-8)") from None
        else:
            v = str(v)
        empty[i] = not v.strip()
        texts.append(v)
    return texts, empty


def new_tokenizer(kind: str, lowercase: bool):
    try:
        from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers
    except ImportError as exc:
        raise DataError("text inputs need the Hugging Face `tokenizers` package, which is not installed",
                        hint="pip install 'dlforge[text]'") from exc

    if kind == "wordpiece":
        tok = Tokenizer(models.WordPiece(unk_token=UNK))
        tok.normalizer = normalizers.BertNormalizer(lowercase=lowercase, strip_accents=lowercase or None)
        tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
        tok.decoder = decoders.WordPiece()
    else:
        # BPE over BERT-style words (split on spaces and punctuation). No continuing-subword prefix: with one,
        # the trainer numbers those tokens in hash order and runs differ (huggingface/tokenizers#1794).
        tok = Tokenizer(models.BPE(unk_token=UNK))
        tok.normalizer = normalizers.BertNormalizer(lowercase=lowercase, strip_accents=lowercase or None)
        tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    return tok


def new_trainer(kind: str, vocab_size: int, min_frequency: int):
    from tokenizers import trainers

    if kind == "wordpiece":
        return trainers.WordPieceTrainer(vocab_size=vocab_size, min_frequency=min_frequency, special_tokens=SPECIAL,
                                         show_progress=False)
    return trainers.BpeTrainer(vocab_size=vocab_size, min_frequency=min_frequency, special_tokens=SPECIAL,
                               show_progress=False)


@input_features.register("text")
class TextFeature(Feature):
    def fit(self, values):
        prep = self.config.preprocessing
        if getattr(self.config.encoder, "embeddings_from", "none") == "teacher":
            raise DataError(f"input '{self.name}' takes its tokens and embeddings from a teacher "
                            "(encoder.embeddings_from: teacher), and there is none here", where=f"{self.field_path}.encoder",
                            hint="train it with `dlforge distill TEACHER_RUN --student RECIPE`, or set embeddings_from: none")
        texts, empty = as_texts(values, name=self.name, where=self.field_path)
        if empty.all():
            raise DataError(f"text column '{self.name}' is empty in every training row", where=self.field_path,
                            hint="check the column name, or drop this input")
        self.backbone_ = getattr(self.config.encoder, "name", None) if getattr(
            self.config.encoder, "name", None) in PRETRAINED_TEXT else None
        if self.backbone_:  # a pretrained backbone reads its own vocabulary: nothing to train
            self.tokenizer_ = pretrained_tokenizer(self.backbone_, where=f"{self.field_path}.encoder")
            self.max_length_ = prep.max_length
            return self
        self.tokenizer_ = new_tokenizer(prep.tokenizer, prep.lowercase)
        self.tokenizer_.train_from_iterator(texts, trainer=new_trainer(prep.tokenizer, prep.vocab_size, prep.min_frequency))
        self.max_length_ = prep.max_length
        return self

    def ids(self, values) -> tuple[torch.Tensor, dict]:
        """(n, L) int64 token ids and counts {truncated, empty, tokens}."""
        texts, empty = as_texts(values, name=self.name, where=self.field_path)
        if getattr(self, "backbone_", None):
            ids, truncated, tokens = encode_pretrained(self.tokenizer_, texts, self.max_length_)
            return ids, {"truncated": truncated, "empty": int(empty.sum()), "tokens": tokens}
        encodings = self.tokenizer_.encode_batch(texts, add_special_tokens=False)
        limit = self.max_length_ - 1  # room for [CLS]
        lengths = np.fromiter((len(e.ids) for e in encodings), dtype=np.int64, count=len(encodings))
        width = int(min(limit, lengths.max(initial=0))) + 1
        out = np.zeros((len(texts), width), dtype=np.int64)
        out[:, 0] = self.tokenizer_.token_to_id(CLS)
        for i, e in enumerate(encodings):
            piece = e.ids[:limit]
            out[i, 1:1 + len(piece)] = piece
        counts = {"truncated": int((lengths > limit).sum()), "empty": int(empty.sum()),
                  "tokens": int(np.minimum(lengths, limit).sum())}
        return torch.from_numpy(out), counts

    def transform(self, values):
        ids, counts = self.ids(values)
        self.count("truncated", counts["truncated"])
        self.count("empty", counts["empty"])
        return ids

    def state(self):
        return {"tokenizer": json.loads(self.tokenizer_.to_str()), "max_length": self.max_length_,
                "backbone": getattr(self, "backbone_", None)}

    def load_state(self, state):
        try:
            from tokenizers import Tokenizer
        except ImportError:  # serving with only the `serve` extra: the saved pipeline runs in plain Python
            Tokenizer = PlainTokenizer
        self.tokenizer_ = Tokenizer.from_str(json.dumps(state["tokenizer"]))
        self.max_length_ = state["max_length"]
        self.backbone_ = state.get("backbone")
        return self

    def dropout_ids(self) -> dict:
        """For token dropout (data/augment.py): the id that replaces a dropped token and the ids never dropped."""
        keep = [i for t in (PAD, CLS, "[SEP]") if (i := self.tokenizer_.token_to_id(t)) is not None]
        return {"unk_id": self.tokenizer_.token_to_id(UNK), "keep_ids": keep}

    def signature(self):
        return {"type": "text", "dtype": "str", "vocab_size": self.tokenizer_.get_vocab_size(),
                "max_length": self.max_length_, "pad_id": 0}

    def tokens(self, text: str) -> list[str]:
        """The tokens the model sees for one text ([CLS] first), for explanations."""
        return [CLS] + self.tokenizer_.encode(text, add_special_tokens=False).tokens[: self.max_length_ - 1]


@input_kinds.register("text")
class TextKind(InputKind):
    def api_field(self, name, sig):
        return Text, Field(..., alias=name, description="Text.", examples=["some text"])

    def form_value(self, value):
        return value.decode("utf-8", errors="replace") if isinstance(value, bytes) else value

    def init_entry(self, values):
        return {"encoder": {"name": "embed", "dim": 64}, "preprocessing": {"max_length": 256}}


__all__ = ["TextFeature", "TextKind", "as_texts", "rows_preview"]
