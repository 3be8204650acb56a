"""Representation (feature) distillation: hints from the teacher's vectors, not only its logits.

The soft targets of a two-class task carry about one number per sentence. The teacher's representations carry far
more, and a student can be asked to reproduce them through a training-only linear projection (FitNets, Romero et
al. 2015; TinyBERT, Jiao et al. 2020):

- `sentence`: the student's pooled feature vector (its encoder's output, what its head reads), projected to the
  teacher's width, regressed on the teacher's pooled sentence vector (what the teacher's head reads).
- `both`: the two terms, each with the same weight (TinyBERT's hidden-state and output-vector terms together).
- `tokens`: a text CNN student on the teacher's own word pieces (`encoder.embeddings_from: teacher`) has one
  feature column per teacher token, so the positions align 1:1: its per-token maps before max pooling, projected,
  are regressed on the teacher's last-layer token states, over the real tokens only.

The hint term is `weight * (mean squared error | 1 - cosine)`, added to the distillation loss. The projection is a
child module of the student during training only (so the optimizer trains it), removed before the student is
written: the exported student is the plain architecture, as fast as without hints.

The teacher's vectors are computed once, in eval mode, on length-sorted batches, and cached beside its logits
(safetensors under $DLFORGE_CACHE/teacher_logits/hints-<key>, keyed by the teacher's weights and the training rows):
the sentence vectors (rows x width), and the token states stored ragged in float16 (real tokens only, with each
row's offset and length). Training batches carry only a row index among their targets; the hook gathers the rows'
vectors with tensor indexing (no per-sample Python, no host sync).
"""

from __future__ import annotations

import hashlib

import numpy as np
import torch
import torch.nn.functional as F

from dlforge.artifact.format import rows_sha256
from dlforge.core.errors import DlforgeError
from dlforge.core.files import atomic_path
from dlforge.training.feature_cache import cache_root

HINTS = ("none", "sentence", "tokens", "both")
HINT_LOSSES = ("mse", "cosine")
ROW = "__hint_row__"  # the training rows' index, carried among the targets so the hook finds their vectors
PROJECTION = "distill_hint"  # the training-only projections' attribute on the student (a ModuleDict by hint)


def hint_loss(student: torch.Tensor, teacher: torch.Tensor, mask: torch.Tensor | None = None,
              kind: str = "mse") -> torch.Tensor:
    """Mean squared error (over elements) or 1 - cosine similarity (over vectors) between the student's projected
    vectors and the teacher's, (..., D) each; `mask` (...) keeps only the real positions. Zero when they are equal."""
    teacher = teacher.to(student.dtype)
    if kind == "cosine":
        per = 1 - F.cosine_similarity(student, teacher, dim=-1)
    else:
        per = (student - teacher).pow(2).mean(-1)
    if mask is None:
        return per.mean()
    keep = mask.to(per.dtype)
    return (per * keep).sum() / keep.sum().clamp(min=1.0)


def check_hint(hint: str, weight: float, loss: str, *, transfer: int = 0) -> None:
    """The hint options, or one clear error naming the option."""
    if hint not in HINTS:
        raise DlforgeError(f"--hint is one of {', '.join(HINTS)}; got {hint!r}", where="--hint",
                           hint="sentence: the teacher's pooled sentence vector; tokens: its last-layer token "
                                "states; both: the two terms, each with the weight")
    if loss not in HINT_LOSSES:
        raise DlforgeError(f"--hint-loss is one of {', '.join(HINT_LOSSES)}; got {loss!r}", where="--hint-loss")
    if not (weight >= 0 and np.isfinite(weight)):
        raise DlforgeError(f"--hint-weight must be a finite number >= 0; got {weight}", where="--hint-weight")
    if hint != "none" and transfer:
        raise DlforgeError("--hint with --transfer is not supported: the rewritten texts have no teacher vectors",
                           where="--hint", hint="use --transfer 0 with a hint, or --hint none with a transfer set")


def _text_input(data, recipe, hint: str) -> str:
    """The one text input both teacher and student read (hints are defined for one-text-input teachers)."""
    inputs = data.predictor.signature["inputs"]
    names = list(inputs)
    if len(names) != 1 or inputs[names[0]]["type"] != "text":
        raise DlforgeError(f"--hint {hint} needs a teacher with one text input; it reads {names}", where="--hint",
                           hint="use --hint none")
    name = names[0]
    if hint in ("tokens", "both"):
        field = next(f for f in recipe.inputs if f.name == name)
        if getattr(field.encoder, "embeddings_from", "none") != "teacher" or field.encoder.name != "cnn":
            raise DlforgeError(f"--hint {hint} needs a text CNN student on the teacher's own word pieces (encoder "
                               "name: cnn, embeddings_from: teacher), so its positions align with the teacher's",
                               where="--hint", hint="use --hint sentence for this student")
        if getattr(data.predictor.model.encoders[name], "backbone", None) is None:
            raise DlforgeError(f"--hint {hint} needs a transformer teacher (its input '{name}' has no backbone "
                               "with token states)", where="--hint", hint="use --hint sentence")
    return name


def teacher_vectors(data, name: str, *, tokens: bool, batch: int = 128) -> dict[str, torch.Tensor]:
    """The teacher's pooled vectors (and, with `tokens`, its last-layer token states, ragged) on the training rows,
    in the rows' order, from length-sorted eval batches (call it under `torch.no_grad()`)."""
    predictor = data.predictor
    encoder = predictor.model.encoders[name]
    texts = np.asarray(data.part_table("train").columns[name])
    ids = predictor.encode_inputs({name: texts})[name]
    lengths = (ids != getattr(encoder, "pad_id", 0)).sum(1)
    order = torch.argsort(lengths, descending=True, stable=True)
    pooled: list[torch.Tensor] = []
    states: list[torch.Tensor] = []
    # The module itself, not the predictor's runtime (whose traced lean graph would skip the hooks).
    model = predictor.model.eval()
    handles = [encoder.register_forward_hook(lambda m, i, out: pooled.append(out.float()))]
    if tokens:
        def keep_states(module, args, kwargs, out):  # an HF backbone, called with input_ids= and attention_mask=
            real = kwargs["attention_mask"].bool()
            states.append(out.last_hidden_state[real].half())  # row-major: each row's real tokens, in order

        handles.append(encoder.backbone.register_forward_hook(keep_states, with_kwargs=True))
    try:
        for start in range(0, len(order), batch):
            rows = order[start:start + batch]
            width = max(1, int(lengths[rows].max()))
            model({name: ids[rows, :width]})
    finally:
        for handle in handles:
            handle.remove()
    inverse = torch.empty_like(order)
    inverse[order] = torch.arange(len(order))
    out = {"sentence": torch.cat(pooled)[inverse].contiguous(), "lengths": lengths.long()}
    if tokens:
        sorted_lengths = lengths[order]
        sorted_offsets = torch.cumsum(sorted_lengths, 0) - sorted_lengths
        out["tokens"] = torch.cat(states).contiguous()
        out["offsets"] = sorted_offsets[inverse].long().contiguous()
    return out


def teacher_hints(data, recipe, hint: str, *, expected_rows: int, say=lambda text: None
                  ) -> tuple[str, dict[str, torch.Tensor], bool]:
    """(text input name, the teacher's vectors on the training rows, cache hit). One pass computes both the
    sentence vectors and the token states; a later student with either hint reads them back."""
    from safetensors.torch import load_file, save_file

    name = _text_input(data, recipe, hint)
    meta = data.predictor.meta
    key = hashlib.sha256("|".join([meta.get("content_sha256") or "", (meta.get("weights") or {}).get("sha256", ""),
                                   rows_sha256(data.rows["train"]), name]).encode()).hexdigest()[:32]
    path = cache_root().parent / "teacher_logits" / f"hints-{key}.safetensors"
    want = {"sentence", "lengths"} | ({"tokens", "offsets"} if hint in ("tokens", "both") else set())
    if path.is_file():
        try:
            cached = load_file(str(path))
            if want <= set(cached) and len(cached["sentence"]) == expected_rows:
                return name, cached, True
        except Exception:  # a damaged cache file is recomputed, never trusted
            pass
    tokens = getattr(data.predictor.model.encoders[name], "backbone", None) is not None
    say("computing the teacher's sentence vectors" + (" and token states" if tokens else "")
        + " on the training split (once; cached for later students)")
    with torch.no_grad():
        vectors = teacher_vectors(data, name, tokens=tokens)
    if len(vectors["sentence"]) != expected_rows:
        raise DlforgeError("the teacher's training rows differ from the student's", where="--hint",
                           hint="the student must read the teacher's data the same way")
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp:
        save_file(vectors, str(tmp))
    return name, vectors, False


def attach_hint(hint: str, name: str, vectors: dict[str, torch.Tensor], *, weight: float, loss: str,
                student_ids: torch.Tensor | None = None, pad_id: int = 0):
    """(model transform, loss hook, detach) for a hint on input `name`. The transform gives the student its
    training-only projection (before the optimizer exists, so it is trained) and starts capturing the student's
    features; the hook adds `weight * hint_loss` on training batches (those carrying the row index); `detach(model)`
    removes the projection and the capture, so the written student is the plain architecture."""
    width = vectors["sentence"].shape[1]
    parts = ("sentence", "tokens") if hint == "both" else (hint,)
    if "tokens" in parts and student_ids is not None:
        if not torch.equal((student_ids != pad_id).sum(1).long(), vectors["lengths"].long()):
            raise DlforgeError("the student's tokens do not align with the teacher's", where="--hint",
                               hint="the student must read the teacher's word pieces (embeddings_from: teacher)")
    captured: dict[str, torch.Tensor] = {}
    handles = []
    device_vectors: dict[str, torch.Tensor] = {}

    def transform(model):
        encoder = model.encoders[name]
        model.add_module(PROJECTION, torch.nn.ModuleDict({part: torch.nn.Linear(encoder.output_dim, width)
                                                          for part in parts}))
        if "tokens" in parts:
            encoder.keep_token_maps(True)
        if "sentence" in parts:
            handles.append(encoder.register_forward_hook(
                lambda m, i, out: captured.__setitem__("pooled", out) if m.training else None))
        return model

    def hook(trainer, logits, targets, total):
        rows = targets.get(ROW)
        if rows is None:  # a validation batch
            return total
        model = trainer.model
        projections = getattr(model, PROJECTION)
        device = rows.device
        if not device_vectors:
            device_vectors.update({k: v.to(device) for k, v in vectors.items()})
        if "sentence" in parts:
            pooled = captured.pop("pooled")
            total = total + weight * hint_loss(projections["sentence"](pooled), device_vectors["sentence"][rows],
                                               kind=loss)
        if "tokens" in parts:
            maps = model.encoders[name].token_maps().transpose(1, 2)  # (B, L, C), L the batch's longest
            positions = torch.arange(maps.shape[1], device=device)
            mask = positions < device_vectors["lengths"][rows, None]
            index = torch.where(mask, device_vectors["offsets"][rows, None] + positions, 0)
            total = total + weight * hint_loss(projections["tokens"](maps), device_vectors["tokens"][index], mask,
                                               kind=loss)
        return total

    def detach(model):
        for handle in handles:
            handle.remove()
        encoder = model.encoders[name]
        if hasattr(encoder, "keep_token_maps"):
            encoder.keep_token_maps(False)
        if hasattr(model, PROJECTION):
            delattr(model, PROJECTION)
        captured.clear()
        device_vectors.clear()
        return model

    return transform, hook, detach


__all__ = ["HINTS", "HINT_LOSSES", "ROW", "attach_hint", "check_hint", "hint_loss", "teacher_hints",
           "teacher_vectors"]
