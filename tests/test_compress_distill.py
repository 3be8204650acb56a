"""Distillation students that read the teacher's tokens and start from its token embeddings
(`encoder.embeddings_from: teacher`), on a tiny text teacher trained from scratch (seconds; no MiniLM needed)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import yaml

from conftest import main_ok

WORDS = ["Good fine film", "bad Awful plot", "fine good day out", "awful bad night in", "a fine cast", "a bad script"]


def _recipe(csv: Path, encoder: dict, **prep) -> dict:
    return {"name": "text-teacher", "data": {"source": str(csv), "split": {"val": 0.2, "test": 0.2, "seed": 0}},
            "inputs": [{"name": "text", "type": "text", "encoder": encoder,
                        "preprocessing": {"tokenizer": "wordpiece", "vocab_size": 100, "min_frequency": 1,
                                          "max_length": 12, **prep}}],
            "outputs": [{"name": "label", "type": "binary"}], "training": {"epochs": 2, "batch_size": 8}}


@pytest.fixture(scope="module")
def teacher(tmp_path_factory) -> Path:
    import dlforge

    tmp = tmp_path_factory.mktemp("distill_text")
    pd.DataFrame({"text": WORDS * 8, "label": ["pos", "neg"] * 24}).to_csv(tmp / "t.csv", index=False)
    dlforge.train(_recipe(tmp / "t.csv", {"name": "embed", "dim": 8}), out=tmp / "teacher", progress=False)
    return tmp / "teacher"


def _student(teacher: Path, tmp_path: Path, base: dict | None = None, **encoder) -> Path:
    # The student asks for a BPE vocabulary of its own, cased, 3 tokens: embeddings_from: teacher must override all.
    base = base or {"name": "cnn", "filters": 4, "kernel_sizes": [2]}
    recipe = _recipe(teacher.parent / "t.csv", {**base, **encoder},
                     tokenizer="bpe", lowercase=False, max_length=3)
    path = tmp_path / "student.yaml"
    path.write_text(yaml.safe_dump(recipe))
    return path


def _table(run: Path) -> torch.Tensor:
    import dlforge

    return next(m for m in dlforge.load(run).model.encoders["text"].modules()
                if isinstance(m, torch.nn.Embedding)).weight.detach()


LSTM = {"name": "lstm", "hidden": 4, "pooling": "max"}  # Tang et al.'s BiLSTM student, tiny


@pytest.mark.parametrize("freeze, base", [(True, None), (False, None), (True, LSTM)], ids=["cnn-frozen", "cnn",
                                                                                             "bilstm-frozen"])
def test_a_student_reads_the_teachers_tokens_from_its_embeddings(teacher, tmp_path, monkeypatch, freeze, base):
    import dlforge
    from dlforge.compress.distill import distill

    monkeypatch.setenv("DLFORGE_CACHE", str(tmp_path / "cache"))
    done = distill(teacher, str(_student(teacher, tmp_path, base, dim=8, embeddings_from="teacher",
                                         freeze_embeddings=freeze)),
                   temperature=2.0, alpha=0.5, overrides=["training.epochs=2"], out=tmp_path / "student")
    assert done["embeddings_from_teacher"] == ["text"]
    student, taught = dlforge.load(tmp_path / "student"), dlforge.load(teacher)
    texts = np.asarray(["a Good fine film out tonight", "bad"])
    # The teacher's tokens (its lowercase WordPiece, 12 long), not the student's own preprocessing (BPE, cased, 3).
    assert torch.equal(student.encode_inputs({"text": texts})["text"], taught.encode_inputs({"text": texts})["text"])
    theirs, ours = _table(teacher), _table(tmp_path / "student")
    assert ours.shape == theirs.shape and torch.count_nonzero(ours[0]) == 0  # the padding row is zero
    if freeze:  # the teacher's vectors as they are, after training
        assert torch.equal(ours[1:], theirs[1:])
    else:  # started there, then trained
        assert not torch.equal(ours[1:], theirs[1:])
        assert torch.corrcoef(torch.stack([ours[1:].flatten(), theirs[1:].flatten()]))[0, 1] > 0.5
    assert set(student.predict({"text": texts})) <= {"pos", "neg"}


def test_teacher_embeddings_of_another_width_or_without_a_teacher_are_refused(teacher, tmp_path, capsys,
                                                                             monkeypatch):
    monkeypatch.setenv("DLFORGE_CACHE", str(tmp_path / "cache"))
    path = _student(teacher, tmp_path, dim=16, embeddings_from="teacher")
    assert not main_ok(["distill", str(teacher), "--student", str(path)])
    err = capsys.readouterr().err
    assert "8-d" in err and "encoder.dim to 8" in err
    path = _student(teacher, tmp_path, dim=8, embeddings_from="teacher")
    assert not main_ok(["train", str(path), "--out", str(tmp_path / "alone")])
    err = capsys.readouterr().err
    assert "embeddings_from: teacher" in err and "dlforge distill" in err


def test_rewrites_mask_words_cut_ngrams_and_repeat_by_seed():
    from dlforge.compress.distill_transfer import rewrite_texts

    texts = ["one two three four five six seven eight nine ten"] * 2 + ["alone", ""]
    out = rewrite_texts(texts, 20, mask_token="[MASK]", seed=3)
    assert out == rewrite_texts(texts, 20, mask_token="[MASK]", seed=3) != rewrite_texts(texts, 20,
                                                                                          mask_token="[MASK]", seed=4)
    assert len(out) == len(set(out)) and not set(out) & set(texts)  # new texts only, each once
    assert any("[MASK]" in t for t in out) and any(len(t.split()) <= 5 for t in out)
    assert all(set(t.split()) <= set(texts[0].split()) | {"[MASK]", "alone"} for t in out)


def test_a_transfer_set_is_labelled_by_the_teacher_once_and_joins_training(teacher, tmp_path, monkeypatch):
    from safetensors.torch import load_file

    import dlforge
    from dlforge.compress.distill import distill
    from dlforge.compress.distill_transfer import teacher_targets, transfer_set
    from dlforge.compress.variant import RunData

    monkeypatch.setenv("DLFORGE_CACHE", str(tmp_path / "cache"))
    student = str(_student(teacher, tmp_path, dim=8))
    first = distill(teacher, student, alpha=0.5, overrides=["training.epochs=1"], transfer=3, out=tmp_path / "a")
    second = distill(teacher, student, alpha=0.5, overrides=["training.epochs=1"], transfer=3, out=tmp_path / "b")
    assert first["transfer_rows"] == second["transfer_rows"] > 0
    cached = list((tmp_path / "cache" / "teacher_logits").glob("transfer-*.safetensors"))
    assert len(cached) == 1
    name, texts, logits, hit = transfer_set(RunData.load(teacher), 3)
    assert hit and name == "text" and len(texts) == first["transfer_rows"]
    # The cached logits are the teacher's own answers on the rewrites (computed in length-sorted batches).
    taught = dlforge.load(teacher)
    expected = taught.logits(taught.encode_inputs({"text": np.asarray(texts, dtype=object)}))["label"]
    assert torch.allclose(load_file(str(cached[0]))["label"].reshape(-1), expected.reshape(-1), atol=1e-5)
    hard = teacher_targets(taught.signature, logits, {"label": torch.zeros(4, 1)})["label"]
    assert hard.shape == (len(texts), 1) and torch.equal(hard.reshape(-1), (expected.reshape(-1) > 0).float())


@pytest.mark.parametrize("layers", [1, 2])
def test_a_text_cnn_gives_the_same_vectors_with_or_without_trailing_padding(layers):
    from dlforge.models.encoders.text import TextCNN
    from dlforge.recipe.inputs import TextCNNEncoder

    torch.manual_seed(0)
    cnn = TextCNN(TextCNNEncoder(dim=6, filters=3, kernel_sizes=[2, 3, 4], layers=layers),
                  {"vocab_size": 20, "pad_id": 0}, None)
    ids = torch.tensor([[2, 5, 7, 9, 0], [2, 4, 0, 0, 0]])
    padded = torch.cat([ids, torch.zeros(2, 7, dtype=torch.long)], 1)
    assert torch.allclose(cnn(ids), cnn(padded), atol=1e-6)


def _context_widths(layers: int) -> list[int]:
    """For each pooled channel of a kernel-3 text CNN: how many token positions its value depends on."""
    from dlforge.models.encoders.text import TextCNN
    from dlforge.recipe.inputs import TextCNNEncoder

    torch.manual_seed(0)
    cnn = TextCNN(TextCNNEncoder(dim=4, filters=8, kernel_sizes=[3], layers=layers), {"vocab_size": 30, "pad_id": 0},
                  None)
    kept = []

    def keep(module, args, out):  # returns None: the output is left as it is
        out.retain_grad()
        kept.append(out)

    cnn.embedding.register_forward_hook(keep)
    out = cnn(torch.arange(1, 13).reshape(1, 12))
    widths = []
    for channel in range(out.shape[1]):
        kept[0].grad = None
        out[0, channel].backward(retain_graph=True)
        touched = (kept[0].grad[0].abs().sum(1) > 0).nonzero().reshape(-1)
        widths.append(int(touched.max() - touched.min() + 1) if len(touched) else 0)
    return widths


def test_a_second_text_cnn_layer_widens_each_features_context_and_keeps_the_output_width():
    from dlforge.models.encoders.text import TextCNN
    from dlforge.recipe.inputs import TextCNNEncoder

    assert max(_context_widths(1)) == 3  # Kim's CNN: one kernel's span
    assert max(_context_widths(2)) == 5  # a 3-wide layer on top: two tokens more
    one, two = (TextCNN(TextCNNEncoder(dim=4, filters=8, kernel_sizes=[3, 5], layers=n), {"vocab_size": 30}, None)
                for n in (1, 2))
    assert one.output_dim == two.output_dim == 16
    extra = sum(p.numel() for p in two.parameters()) - sum(p.numel() for p in one.parameters())
    assert extra == 16 * 16 * 3 + 16  # one residual 16 -> 16 convolution; layers 1 has none (old weights load)


def test_the_soft_target_term_is_the_tempered_kl_or_the_logits_mse():
    import torch.nn.functional as F

    from dlforge.compress.distill import TEACHER, kd_loss_hook

    signature = {"outputs": {"y": {"type": "category"}, "b": {"type": "binary"}}}
    student = {"y": torch.tensor([[1.0, 0.0, -1.0], [0.5, 0.5, 2.0]]), "b": torch.tensor([[0.3], [-2.0]])}
    teacher = {TEACHER + "y": torch.tensor([[3.0, 0.0, -3.0], [0.0, 1.0, 4.0]]), TEACHER + "b": torch.tensor([[1.5], [-4.0]])}
    label_loss = torch.tensor(0.25)
    mse = kd_loss_hook(signature, temperature=4.0, alpha=1.0, soft_loss="mse")(None, student, teacher, label_loss)
    want = F.mse_loss(student["y"], teacher[TEACHER + "y"]) + F.mse_loss(student["b"], teacher[TEACHER + "b"])
    assert torch.allclose(mse, want)  # the logits themselves: no temperature, no softmax
    assert torch.allclose(kd_loss_hook(signature, temperature=1.0, alpha=1.0, soft_loss="mse")(
        None, student, teacher, label_loss), want)
    kl = kd_loss_hook(signature, temperature=2.0, alpha=0.5)(None, student, teacher, label_loss)
    soft_y = F.kl_div(F.log_softmax(student["y"] / 2, -1), F.softmax(teacher[TEACHER + "y"] / 2, -1),
                      reduction="batchmean") * 4
    soft_b = F.binary_cross_entropy_with_logits(student["b"] / 2, torch.sigmoid(teacher[TEACHER + "b"] / 2)) * 4
    assert torch.allclose(kl, 0.5 * (soft_y + soft_b) + 0.5 * label_loss)
    # A validation batch carries no teacher logits: the label loss alone.
    assert kd_loss_hook(signature, temperature=2.0, alpha=0.5, soft_loss="mse")(None, student, {}, label_loss) is label_loss


def test_an_unknown_soft_loss_is_refused(teacher, tmp_path, capsys):
    assert not main_ok(["distill", str(teacher), "--student", str(_student(teacher, tmp_path, dim=8)),
                        "--soft-loss", "cosine"])
    err = capsys.readouterr().err
    assert "--soft-loss" in err and "kl, mse" in err


def test_text_cnn_dropout_acts_on_the_pooled_vector_in_training_only():
    from dlforge.models.encoders.text import TextCNN
    from dlforge.recipe.inputs import TextCNNEncoder

    torch.manual_seed(0)
    config = TextCNNEncoder(dim=6, filters=50, kernel_sizes=[2, 3])
    plain, dropped = (TextCNN(c, {"vocab_size": 20, "pad_id": 0}, None)
                      for c in (config, config.model_copy(update={"dropout": 0.5})))
    dropped.load_state_dict(plain.state_dict())  # dropout has no weights: the same encoder
    ids = torch.tensor([[2, 5, 7, 9, 3], [2, 4, 6, 0, 0]])
    assert torch.equal(plain.eval()(ids), dropped.eval()(ids))
    full, out = plain(ids), dropped.train()(ids)
    kept = out != 0
    assert 0.3 < kept.float().mean() < 0.7 and torch.allclose(out[kept], 2 * full[kept])


def test_only_text_recurrent_encoders_take_the_teachers_embeddings():
    from pydantic import ValidationError

    from dlforge.recipe.inputs import SequenceRNNEncoder, TextRNNEncoder

    assert TextRNNEncoder(embeddings_from="teacher", freeze_embeddings=True).embeddings_from == "teacher"
    with pytest.raises(ValidationError):  # a sequence of numbers has no token table to take
        SequenceRNNEncoder(embeddings_from="teacher")


# ------------------------------------------------------------ representation (feature) distillation: hints

def test_the_hint_loss_is_zero_when_the_projected_features_equal_the_teachers():
    from dlforge.compress.distill_hints import hint_loss

    torch.manual_seed(0)
    teacher = torch.randn(3, 5, 4)
    assert hint_loss(teacher.clone(), teacher) == 0 and hint_loss(teacher.clone(), teacher, kind="cosine").abs() < 1e-6
    assert hint_loss(2 * teacher, teacher, kind="cosine").abs() < 1e-6  # cosine ignores the scale, mse does not
    assert torch.isclose(hint_loss(teacher + 1, teacher), torch.tensor(1.0))
    # Masked positions (padding) count for nothing, whatever the student puts there.
    mask = torch.ones(3, 5, dtype=torch.bool)
    mask[:, 3:] = False
    student = teacher.clone()
    student[:, 3:] += 100
    assert hint_loss(student, teacher, mask) == 0 and hint_loss(student, teacher) > 1000
    student[0, 0] += 2  # one real token off by 2 in each of 4 dims: 4 / (9 real tokens)
    assert torch.isclose(hint_loss(student, teacher, mask), torch.tensor(4 / 9))


def _cnn_student(vocab: int = 30, dim: int = 6):
    from dlforge.models.encoders.text import TextCNN
    from dlforge.recipe.inputs import TextCNNEncoder

    class Student(torch.nn.Module):  # the two attributes a hint reads: encoders and a trainable module tree
        def __init__(self):
            super().__init__()
            config = TextCNNEncoder(name="cnn", dim=dim, filters=3, kernel_sizes=[2, 3])
            self.encoders = torch.nn.ModuleDict({"text": TextCNN(config, {"vocab_size": vocab, "pad_id": 0}, None)})

        def forward(self, x):
            return {"label": self.encoders["text"](x["text"])[:, :1]}

    return Student()


@pytest.mark.parametrize("hint", ["tokens", "sentence", "both"])
def test_a_hint_gathers_each_rows_teacher_vectors_and_is_zero_when_the_projection_matches(hint):
    from types import SimpleNamespace

    from dlforge.compress.distill_hints import PROJECTION, ROW, attach_hint

    torch.manual_seed(0)
    ids = torch.tensor([[1, 2, 3, 0, 0], [4, 5, 0, 0, 0], [6, 7, 8, 9, 10], [11, 0, 0, 0, 0]])
    lengths = (ids != 0).sum(1)
    width = 7
    model, probe = _cnn_student(), _cnn_student()
    placeholder = {"sentence": torch.zeros(4, width), "lengths": lengths,
                   "tokens": torch.zeros(int(lengths.sum()), width), "offsets": torch.cumsum(lengths, 0) - lengths}
    transform, _, _ = attach_hint(hint, "text", placeholder, weight=1.0, loss="mse", student_ids=ids)
    probe = transform(probe)
    probe.encoders["text"].keep_token_maps(True)
    # The teacher's vectors, built so that the (fixed) projection of the student's features equals them exactly.
    model.load_state_dict({k: v for k, v in probe.state_dict().items() if not k.startswith(PROJECTION)})
    projections = getattr(probe, PROJECTION)
    with torch.no_grad():
        probe.train()({"text": ids})
        maps = probe.encoders["text"].token_maps().transpose(1, 2)
        pooled = probe.encoders["text"](ids)
        sentence = projections["sentence"](pooled) if "sentence" in projections else placeholder["sentence"]
        tokens = (torch.cat([projections["tokens"](maps[i, :n]) for i, n in enumerate(lengths.tolist())])
                  if "tokens" in projections else placeholder["tokens"])
    vectors = {**placeholder, "sentence": sentence, "tokens": tokens.half().float()}
    transform, hook, detach = attach_hint(hint, "text", vectors, weight=3.0, loss="mse", student_ids=ids)
    model = transform(model)
    getattr(model, PROJECTION).load_state_dict(projections.state_dict())
    trainer = SimpleNamespace(model=model.train())
    order = torch.tensor([2, 0, 3, 1])  # a shuffled batch: each row must find its own vectors
    model({"text": ids[order]})
    base = torch.tensor(0.5)
    assert torch.isclose(hook(trainer, None, {ROW: order}, base), base, atol=1e-3)
    model({"text": ids[order]})
    wrong = torch.tensor([0, 2, 3, 1])  # rows 2 and 0 swapped: their vectors no longer match
    assert hook(trainer, None, {ROW: wrong}, base) > base + 0.01
    assert hook(trainer, None, {}, base) is base  # a validation batch: no row index, no hint
    detach(model)
    assert not hasattr(model, PROJECTION) and model.encoders["text"].token_maps() is None
    assert not any(k.startswith(PROJECTION) for k in model.state_dict())


def test_a_hint_trains_the_student_caches_the_teachers_vectors_and_exports_no_projection(teacher, tmp_path,
                                                                                       monkeypatch):
    from safetensors.torch import load_file

    import dlforge
    from dlforge.compress.distill import distill
    from dlforge.compress.variant import RunData

    monkeypatch.setenv("DLFORGE_CACHE", str(tmp_path / "cache"))
    student = str(_student(teacher, tmp_path, dim=8))
    plain = distill(teacher, student, alpha=0.5, overrides=["training.epochs=1"], out=tmp_path / "plain")
    first = distill(teacher, student, alpha=0.5, overrides=["training.epochs=1"], out=tmp_path / "a",
                    hint="sentence", hint_weight=5.0, hint_loss="cosine")
    second = distill(teacher, student, alpha=0.5, overrides=["training.epochs=1"], out=tmp_path / "b",
                     hint="sentence", hint_weight=5.0, hint_loss="cosine")
    assert plain["hint"] == "none" and plain["teacher_vectors_cached"] is None
    assert first["teacher_vectors_cached"] is False and second["teacher_vectors_cached"] is True
    cached = list((tmp_path / "cache" / "teacher_logits").glob("hints-*.safetensors"))
    assert len(cached) == 1
    # The cached sentence vectors are the teacher's encoder outputs on its training rows, in their order.
    data = RunData.load(teacher)
    taught = dlforge.load(teacher)
    ids = taught.encode_inputs({"text": np.asarray(data.part_table("train").columns["text"])})["text"]
    with torch.no_grad():
        expected = taught.model.encoders["text"](ids)
    assert torch.allclose(load_file(str(cached[0]))["sentence"], expected, atol=1e-5)
    # The exported student is the plain architecture (no projection), loads and predicts; the hint changed it.
    weights = {run: load_file(str(tmp_path / run / "model.safetensors")) for run in ("plain", "a", "b")}
    assert set(weights["a"]) == set(weights["plain"]) and not any("distill_hint" in k for k in weights["a"])
    assert all(torch.equal(weights["a"][k], weights["b"][k]) for k in weights["a"])  # same seed, same result
    assert any(not torch.equal(weights["a"][k], weights["plain"][k]) for k in weights["a"])
    assert set(dlforge.load(tmp_path / "a").predict({"text": np.asarray(["a fine cast", "bad"])})) <= {"pos", "neg"}


@pytest.mark.parametrize("extra, needle", [
    (["--hint", "words"], "--hint is one of none, sentence, tokens, both"),
    (["--hint", "sentence", "--hint-weight", "-1"], "--hint-weight must be a finite number >= 0"),
    (["--hint", "sentence", "--hint-loss", "l1"], "--hint-loss is one of mse, cosine"),
    (["--hint", "sentence", "--transfer", "2"], "--hint with --transfer is not supported"),
    (["--hint", "tokens"], "--hint tokens needs a text CNN student on the teacher's own word pieces"),
], ids=["hint", "weight", "loss", "transfer", "tokens-own-vocabulary"])
def test_bad_hint_options_exit_2_with_a_clear_message(teacher, tmp_path, capsys, monkeypatch, extra, needle):
    from dlforge.cli import main

    monkeypatch.setenv("DLFORGE_CACHE", str(tmp_path / "cache"))
    with pytest.raises(SystemExit) as exc:
        main(["distill", str(teacher), "--student", str(_student(teacher, tmp_path, dim=8)), "-q", *extra])
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert needle in " ".join(err.split()) and "Traceback" not in err
