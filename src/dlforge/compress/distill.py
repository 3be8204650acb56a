"""Knowledge distillation: a smaller student trained on a teacher run's soft targets plus the labels.

The loss is Hinton et al. (2015): `alpha * T^2 * KL(softmax(teacher/T) || softmax(student/T)) + (1 - alpha) *
label loss` for category outputs (binary and multilabel: the same with sigmoids; number outputs: mean squared error
to the teacher's prediction). `soft_loss="mse"` matches the logits themselves instead (Tang et al. 2019: mean
squared error between the student's and the teacher's logits, no temperature), the same for every output kind. It is a loss hook on the ordinary trainer (training/setup.py `build_training`), so
the student trains with its own recipe's optimizer, schedule, precision and callbacks; `alpha = 0` is plain
training of the same student, the comparison a distillation must beat.

The student trains on the teacher's data and split (its own data section is replaced by the teacher's), encoded
by its own features (a from-scratch text CNN has its own vocabulary where MiniLM has word pieces). With no
augmentation a row's teacher logits never change, so they are computed once, in eval mode, and cached on disk
(safetensors under $DLFORGE_CACHE/teacher_logits/, keyed by the teacher's model.json digest and the training rows):
a second student, temperature or alpha costs no teacher pass. They ride along the training batches as extra
target tensors, so the trainer slices them with the rows and no per-step lookup is needed. Augmented students are
refused for now (the teacher would have to run on every augmented batch). Feature hints (`hint=`: the teacher's
sentence vectors and token states, through a training-only projection) are in distill_hints.py.
"""

from __future__ import annotations

import hashlib
import json
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from dlforge.artifact.format import rows_sha256
from dlforge.compress.passes import Candidate, passes
from dlforge.compress.variant import RunData, main_metric, variant_dir, write_variant
from dlforge.core.errors import DlforgeError
from dlforge.core.files import atomic_path
from dlforge.data.augment import augmentation_on
from dlforge.data.prepare import Encoded, prepare
from dlforge.recipe.io import load_recipe
from dlforge.training.feature_cache import cache_root, release_feature_cache
from dlforge.training.setup import build_training

TEACHER = "__teacher__:"  # prefix of the teacher-logit tensors carried among a training split's targets
TABULAR = ("number", "category", "binary")  # tabular input types: no encoder of their own to swap


def student_recipe(teacher_recipe, student: str, overrides: list[str] | None = None):
    """The student's recipe: a YAML file, or an encoder name swapped into the teacher's recipe (its one encoded
    input gets `{name: student}` with defaults, the optimizer its defaults: a from-scratch student does not train
    at a pretrained model's fine-tuning rate). Either way the data section is the teacher's."""
    path = Path(student)
    if path.suffix.lower() in (".yaml", ".yml") or path.is_file():
        if not path.is_file():
            raise DlforgeError("no such student recipe", where=str(path), hint="give a recipe YAML or an encoder name")
        data = load_recipe(path).model_dump(mode="json")
    else:
        data = teacher_recipe.model_dump(mode="json")
        encoded = [f for f in data["inputs"] if f.get("encoder") is not None and f["type"] not in TABULAR]
        if len(encoded) != 1:
            raise DlforgeError(f"--student {student!r} names an encoder, but the teacher has {len(encoded)} encoded "
                               "inputs", where="--student", hint="give a student recipe YAML instead")
        # `text:cnn` (the registry's key) and `cnn` (the recipe's name under a text input) both name it.
        prefix = f"{encoded[0]['type']}:"
        encoded[0]["encoder"] = {"name": student[len(prefix):] if student.startswith(prefix) else student}
        data["training"]["optimizer"] = {"name": data["training"]["optimizer"]["name"]}
        data["name"] = f"{data['name']}-student-{student.replace(':', '-')}"
    data["data"] = teacher_recipe.model_dump(mode="json")["data"]
    return load_recipe(data, overrides)


def check_compatible(teacher_signature: dict, recipe, student_prepared=None) -> None:
    """The student must read the teacher's inputs and predict its outputs: same names and types (from its recipe,
    before any data is read) and, once prepared, the same labels in the same order."""
    problems = []
    for group in ("inputs", "outputs"):
        want = {n: s["type"] for n, s in teacher_signature[group].items()}
        got = {f.name: f.type for f in getattr(recipe, group)}
        if want != got:
            problems.append(f"its {group} are {got}, the teacher's {want}")
    if not problems and student_prepared is not None:
        student_signature = student_prepared.signature()
        for name, sig in teacher_signature["outputs"].items():
            if [str(v) for v in sig.get("labels") or []] != [str(v) for v in student_signature["outputs"][name]
                                                             .get("labels") or []]:
                problems.append(f"output '{name}' has other labels than the teacher's")
    if problems:
        raise DlforgeError(f"the student does not match the teacher: {'; '.join(problems)}", where="--student",
                           hint="give the student the teacher's input and output names and types")


def teacher_logits(data: RunData, *, expected_rows: int, say=lambda text: None) -> tuple[dict[str, torch.Tensor], bool]:
    """The teacher's logits on its training rows, from the cache when it has them; (logits, cache hit)."""
    from safetensors.torch import load_file, save_file

    meta = data.predictor.meta
    key = hashlib.sha256("|".join([meta.get("content_sha256") or "", (meta.get("weights") or {}).get("sha256", ""),
                                   rows_sha256(data.rows["train"])]).encode()).hexdigest()[:32]
    path = cache_root().parent / "teacher_logits" / f"{key}.safetensors"
    if path.is_file():
        try:
            cached = load_file(str(path))
            if all(len(v) == expected_rows for v in cached.values()):
                return cached, True
        except Exception:  # a damaged cache file is recomputed, never trusted
            pass
    say("computing the teacher's logits on the training split (once; cached for later students)")
    # The teacher reads the rows through its own features (MiniLM's word pieces), not the student's encoding.
    table = data.part_table("train")
    inputs = data.predictor.signature["inputs"]
    if len(inputs) == 1 and next(iter(inputs.values()))["type"] == "text":  # batches of similar length: less padding
        from dlforge.compress.distill_transfer import by_length_logits

        name = next(iter(inputs))
        logits = by_length_logits(data.predictor, name, np.asarray(table.columns[name]))
    else:
        x = data.predictor.encode_inputs(table)
        with torch.no_grad():
            logits = {name: value.float().contiguous() for name, value in data.predictor.logits(x).items()}
    if any(len(v) != expected_rows for v in logits.values()):
        raise DlforgeError("the teacher's training rows differ from the student's", where="--student",
                           hint="the student must read the teacher's data the same way (image files that fail to "
                                "decode drop rows)")
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp:
        save_file(logits, str(tmp))
    return logits, False


def _token_table(encoder: torch.nn.Module, vocab_size: int) -> torch.nn.Embedding | None:
    """A text encoder's token-embedding table: its one `nn.Embedding` with a row per vocabulary entry (a from-scratch
    encoder's `embedding`, MiniLM's `embeddings.word_embeddings`; position and type tables have other sizes)."""
    tables = [m for m in encoder.modules() if isinstance(m, torch.nn.Embedding) and m.num_embeddings == vocab_size]
    return tables[0] if len(tables) == 1 else None


def teacher_embeddings(teacher, recipe) -> dict[str, torch.Tensor]:
    """Input name -> the teacher's token embeddings (vocabulary x dim) for every student text input with
    `encoder.embeddings_from: teacher`; that input then reads the teacher's own tokens (its fitted tokenizer)."""
    seeded = {}
    for field in recipe.inputs:
        if getattr(field.encoder, "embeddings_from", "none") != "teacher":
            continue
        where = f"inputs.{field.name}.encoder.embeddings_from"
        feature = teacher.inputs.get(field.name)
        vocab = (teacher.signature["inputs"].get(field.name) or {}).get("vocab_size")
        encoder = teacher.model.encoders[field.name] if field.name in teacher.model.encoders else None
        table = _token_table(encoder, vocab) if feature is not None and vocab and encoder is not None else None
        if table is None:
            raise DlforgeError(f"the teacher has no token-embedding table for input '{field.name}' to start the "
                               "student from", where=where, hint="set embeddings_from: none (the student then learns "
                                                                 "its own vocabulary and embeddings)")
        if table.embedding_dim != field.encoder.dim:
            raise DlforgeError(f"the teacher's token embeddings for '{field.name}' are {table.embedding_dim}-d, the "
                               f"student's encoder.dim is {field.encoder.dim}", where=where,
                               hint=f"set the student's encoder.dim to {table.embedding_dim}")
        seeded[field.name] = table.weight.detach().float().clone()
    return seeded


def _seed_embeddings(seeded: dict[str, torch.Tensor]):
    """A model transform (before the optimizer exists): the student's token tables take the teacher's vectors; the
    padding row stays zero (the student's convolutions see padding, the teacher never did)."""

    def transform(model):
        for name, weight in seeded.items():
            table = model.encoders[name].embedding
            with torch.no_grad():
                table.weight.copy_(weight)
                if table.padding_idx is not None:
                    table.weight[table.padding_idx].zero_()
        return model

    return transform


def _with_transfer_set(data: RunData, prepared, train: Encoded, copies: int, *, seed: int, say):
    """The training split with the teacher-labelled rewrites appended (token ids padded to one width)."""
    from dlforge.compress.distill_transfer import teacher_targets, transfer_set

    name, texts, logits, hit = transfer_set(data, copies, seed=seed, say=say)
    ids = prepared.inputs[name].transform(np.asarray(texts, dtype=object))
    width = max(ids.shape[1], train.x[name].shape[1])
    x = {name: torch.cat([F.pad(train.x[name], (0, width - train.x[name].shape[1])),
                          F.pad(ids, (0, width - ids.shape[1]))])}
    labels = teacher_targets(prepared.signature(), logits, train.y)
    y = {}
    for key, value in train.y.items():
        added = logits[key[len(TEACHER):]] if key.startswith(TEACHER) else labels.get(key)
        if added is None:
            raise DlforgeError(f"the training split carries '{key}', which a teacher-labelled row cannot fill",
                               where="--transfer", hint="use --transfer 0")
        y[key] = torch.cat([value, added.to(value.dtype)])
    return Encoded(x, y), len(texts), hit


SOFT_LOSSES = ("kl", "mse")


def kd_loss_hook(signature: dict, *, temperature: float, alpha: float, soft_loss: str = "kl"):
    """The loss hook: alpha * (soft-target term) + (1 - alpha) * (the model's own label loss). The soft-target term
    is the tempered KL (`kl`, Hinton et al.) or the mean squared error between the logits (`mse`, Tang et al.)."""
    kinds = {name: sig["type"] for name, sig in signature["outputs"].items()}
    t = temperature

    def hook(trainer, logits, targets, loss):
        soft = None
        for name, kind in kinds.items():
            teacher = targets.get(TEACHER + name)
            if teacher is None:  # a validation batch, or an output the teacher does not cover
                continue
            student = logits[name].float()
            teacher = teacher.to(student.dtype)
            if soft_loss == "mse" or kind not in ("category", "binary", "multilabel"):
                term = F.mse_loss(student, teacher.reshape(student.shape))
            elif kind == "category":
                term = F.kl_div(F.log_softmax(student / t, -1), F.log_softmax(teacher / t, -1), reduction="batchmean",
                                log_target=True) * t * t
            else:
                term = F.binary_cross_entropy_with_logits(student / t, torch.sigmoid(teacher / t)) * t * t
            soft = term if soft is None else soft + term
        return loss if soft is None else alpha * soft + (1 - alpha) * loss

    return hook


def distill(teacher_run: str | Path, student: str, *, temperature: float = 4.0, alpha: float = 0.7,
            overrides: list[str] | None = None, name: str | None = None, out: str | Path | None = None,
            progress: bool = False, say=lambda text: None, data: RunData | None = None, register: bool = True,
            transfer: int = 0, transfer_seed: int = 0, soft_loss: str = "kl", hint: str = "none",
            hint_weight: float = 1.0, hint_loss: str = "mse") -> dict:
    """Train `student` (a recipe YAML or an encoder name) on `teacher_run`'s soft targets and labels; write it as a
    variant of the teacher (`TEACHER/variants/<name>/`) and return what it did and measured.

    `transfer` > 0 (a one-text-input teacher): up to that many rewrites of every training text, labelled by the
    teacher, join the training split (distill_transfer.py: Tang et al. 2019); their label term reads the teacher's
    decision. `soft_loss`: `kl` (tempered, Hinton et al.) or `mse` on the logits (Tang et al.; the temperature is
    then unused). `hint` (distill_hints.py): `sentence` or `tokens` also regresses the student's features, through a
    training-only projection, on the teacher's pooled sentence vectors or last-layer token states, with weight
    `hint_weight` and loss `hint_loss` (`mse` or `cosine`)."""
    from dlforge.compress.distill_hints import ROW, attach_hint, check_hint, teacher_hints

    check_hint(hint, hint_weight, hint_loss, transfer=transfer)
    if soft_loss not in SOFT_LOSSES:
        raise DlforgeError(f"--soft-loss is one of {', '.join(SOFT_LOSSES)}; got {soft_loss!r}", where="--soft-loss",
                           hint="kl: the tempered soft targets (Hinton et al.); mse: the logits (Tang et al.)")
    if not 0 <= transfer <= 100:
        raise DlforgeError(f"--transfer is rewrites per training text, 0..100; got {transfer}", where="--transfer")
    if not temperature > 0:
        raise DlforgeError(f"--temperature must be > 0; got {temperature}", where="--temperature")
    if not 0.0 <= alpha <= 1.0:
        raise DlforgeError(f"--alpha is the soft targets' weight, 0..1; got {alpha}", where="--alpha")
    data = data or RunData.load(teacher_run)
    recipe = student_recipe(data.recipe, student, overrides)
    augmented = [f.name for f in recipe.inputs if augmentation_on(f)]
    if augmented:
        raise DlforgeError(f"the student augments input(s) {augmented}: distillation caches the teacher's logits per "
                           "row, which augmentation would change", where="--student",
                           hint="turn the student's augmentation off (its inputs' augmentation sections)")
    started = time.perf_counter()
    check_compatible(data.predictor.signature, recipe)
    seeded = teacher_embeddings(data.predictor, recipe)
    prepared = prepare(recipe, table=data.table,
                       fitted={name: data.predictor.inputs[name].state() for name in seeded})
    check_compatible(data.predictor.signature, recipe, prepared)
    train = prepared.splits["train"]
    logits, hit = teacher_logits(data, expected_rows=len(train), say=say)
    say(f"teacher logits: {'read from the cache' if hit else 'computed and cached'}")
    splits = dict(prepared.splits)
    splits["train"] = Encoded(train.x, {**train.y, **{TEACHER + n: v for n, v in logits.items()}})
    extra = 0
    if transfer:
        splits["train"], extra, transfer_hit = _with_transfer_set(data, prepared, splits["train"], transfer,
                                                                  seed=transfer_seed, say=say)
        say(f"transfer set: {extra:,} rewritten texts, teacher logits "
            f"{'read from the cache' if transfer_hit else 'computed and cached'}")
    hooks = [kd_loss_hook(prepared.signature(), temperature=temperature, alpha=alpha, soft_loss=soft_loss)]
    transforms = [_seed_embeddings(seeded)] if seeded else []
    detach, hint_hit = None, None
    if hint != "none":
        text, vectors, hint_hit = teacher_hints(data, recipe, hint, expected_rows=len(train), say=say)
        say(f"teacher vectors: {'read from the cache' if hint_hit else 'computed and cached'}")
        transform, hint_hook, detach = attach_hint(
            hint, text, vectors, weight=hint_weight, loss=hint_loss, student_ids=train.x[text],
            pad_id=prepared.signature()["inputs"][text].get("pad_id", 0))
        transforms.append(transform)
        hooks.append(hint_hook)
        train_split = splits["train"]
        splits["train"] = Encoded(train_split.x, {**train_split.y, ROW: torch.arange(len(train_split))})
    with tempfile.TemporaryDirectory(prefix="dlforge-distill-") as work:
        built = build_training(recipe, prepared, splits=splits, run_dir=Path(work), progress=progress,
                               loss_hooks=tuple(hooks), model_transforms=tuple(transforms))
        result = built.trainer.fit()
        release_feature_cache(built.model)
        model = built.model.cpu().eval()
        if detach is not None:  # the projection and the feature capture are training-only
            model = detach(model)
    seconds = time.perf_counter() - started
    name = name or f"distilled_{recipe.name}"
    details = {"student": student, "student_recipe": recipe.name, "temperature": temperature, "alpha": alpha,
               "soft_loss": soft_loss, "hint": hint, "hint_weight": hint_weight if hint != "none" else 0.0,
               "hint_loss": hint_loss if hint != "none" else None, "teacher_vectors_cached": hint_hit,
               "epochs": result.epochs_run, "seconds": round(seconds, 2), "teacher_logits_cached": hit,
               "embeddings_from_teacher": sorted(seeded), "transfer_rows": extra,
               "parameters": {"teacher": sum(p.numel() for p in data.predictor.model.parameters()),
                              "student": sum(p.numel() for p in model.parameters())}}
    path = variant_dir(data.run_dir, name, Path(out) if out else None)
    write_variant(data, path, model, kind="distill", details=details, recipe=recipe, inputs=prepared.inputs,
                  outputs=prepared.outputs, register=register)
    metrics = json.loads((path / "metrics.json").read_text(encoding="utf-8"))
    part = next(iter(metrics))
    metric, value, _ = main_metric(metrics[part], data.predictor.signature)
    details.update(variant=str(path), metric=metric, student_score=value,
                   teacher_score=main_metric(_teacher_scores(data, part), data.predictor.signature)[1])
    return details


def _teacher_scores(data: RunData, part: str) -> dict:
    """The teacher's metrics on `part`: from its metrics.json when it has them (a MiniLM teacher takes a minute to
    re-score 2,551 test rows on this CPU), else evaluated now."""
    try:
        stored = json.loads((Path(data.run_dir) / "metrics.json").read_text(encoding="utf-8"))[part]
        if isinstance(stored, dict) and stored:
            return stored
    except (OSError, ValueError, KeyError, TypeError):
        pass
    return data.predictor.evaluate(data.test_table())


@passes.register("distill")
def distill_pass(source: Candidate, *, work_dir: Path, student: str | None = None, data: RunData | None = None,
                 temperature: float = 4.0, alpha: float = 0.7) -> list[Candidate]:
    """A distilled student of a torch candidate, when the search was given one (`--student`)."""
    if student is None or source.runtime != "torch":
        return []
    details = distill(source.run_dir, student, temperature=temperature, alpha=alpha, data=data, name="distilled",
                      out=Path(work_dir) / "distilled", register=False)
    return [Candidate("distilled", Path(details["variant"]), "torch",
                      notes={"student": student, "temperature": temperature, "alpha": alpha})]


__all__ = ["TEACHER", "check_compatible", "distill", "kd_loss_hook", "student_recipe", "teacher_embeddings",
           "teacher_logits"]
