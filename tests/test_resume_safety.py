"""Issue #11 items 2, 4, 11: --overwrite never mixes two runs, a checkpoint resumes only under its own recipe,
a finished run resumes to nothing (or to its post-training phase only), and leftovers of kills are cleaned.
"""

from __future__ import annotations

import hashlib
import json
import shutil

import pytest
import yaml

import dlforge
from dlforge.core.errors import ArtifactError, DlforgeError, TrainingInterrupted
from conftest import InterruptAt, tabular_recipe


def without_timings(value):
    """Metrics less their wall-clock readings (`*_seconds`: train, prepare, the baseline's fit)."""
    if isinstance(value, dict):
        return {k: without_timings(v) for k, v in value.items() if not k.endswith("_seconds")}
    return value


def _digest(path):
    return hashlib.sha256(path.read_bytes()).hexdigest()


class KillAtFitStart:
    """Stands for a kill right after the new recipe.yaml was written, before the first checkpoint."""

    def on_fit_start(self, trainer):
        raise KeyboardInterrupt


def test_overwrite_clears_the_old_run_first_and_an_early_kill_has_nothing_to_resume(tiny_csv, tmp_path):
    out = tmp_path / "run"
    dlforge.train(tabular_recipe(tiny_csv, training={"epochs": 1, "seed": 0}), out=out, progress=False)
    (out / "plots" / "old_only.png").write_bytes(b"old")
    recipe = tabular_recipe(tiny_csv, training={"epochs": 1, "seed": 1}, combiner={"name": "concat", "layers": [4]})
    with pytest.raises(KeyboardInterrupt):
        dlforge.train(recipe, out=out, overwrite=True, progress=False, callbacks=[KillAtFitStart()])
    assert sorted(p.name for p in out.iterdir()) == ["checkpoint", "recipe.yaml"]  # none of the old run is left
    assert not (out / "checkpoint" / "state.pt").exists()
    with pytest.raises(ArtifactError) as info:  # once: the old seed-0 weights resumed under the seed-1 recipe
        dlforge.train(resume=out, progress=False)
    assert "nothing to resume: the run was stopped before its first checkpoint" in info.value.message
    assert "--overwrite" in info.value.hint and "--resume" not in info.value.hint  # the hint no longer loops


def test_overwrite_refuses_a_directory_that_is_not_a_run(tiny_csv, tmp_path):
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "thesis.tex").write_text("precious")
    with pytest.raises(DlforgeError, match="is not a dlforge run directory"):
        dlforge.train(tabular_recipe(tiny_csv), out=mine, overwrite=True, progress=False)
    assert (mine / "thesis.tex").read_text() == "precious"


def test_a_checkpoint_resumes_only_under_the_recipe_that_wrote_it(tiny_csv, tmp_path):
    out = tmp_path / "run"
    with pytest.raises(TrainingInterrupted):
        dlforge.train(tabular_recipe(tiny_csv), out=out, progress=False, callbacks=[InterruptAt(step=1, epoch=1)])
    recipe = yaml.safe_load((out / "recipe.yaml").read_text())
    recipe["training"]["seed"] = 1
    (out / "recipe.yaml").write_text(yaml.safe_dump(recipe))
    with pytest.raises(ArtifactError, match="the checkpoint was written by a different recipe"):
        dlforge.train(resume=out, progress=False)


@pytest.mark.parametrize("restore_best", [False, True])
def test_resuming_a_finished_early_stopped_run_changes_nothing(tiny_csv, tmp_path, restore_best, capsys):
    # min_delta 10: only the first epoch improves, so patience 1 stops after epoch 2 of 6
    stopping = {"metric": "val.loss", "patience": 1, "min_delta": 10.0, "restore_best": restore_best}
    out = tmp_path / "run"
    first = dlforge.train(tabular_recipe(tiny_csv, training={"epochs": 6, "early_stopping": stopping}), out=out,
                          progress=False)
    assert first.metrics["epochs_run"] == 2 and first.metrics["stopped_early"]
    before = {name: _digest(out / name) for name in ("model.safetensors", "model.json", "metrics.json")}
    again = dlforge.train(resume=out)
    assert "nothing to resume" in capsys.readouterr().err
    assert {name: _digest(out / name) for name in before} == before
    assert again.metrics == first.metrics
    # Killed after training, during the post-training phase: the resume redoes that phase only, exactly.
    for name in ("model.json", "metrics.json", "report.html"):
        (out / name).unlink()
    meta = json.loads((out / "checkpoint" / "meta.json").read_text())
    del meta["complete"]
    (out / "checkpoint" / "meta.json").write_text(json.dumps(meta))
    redone = dlforge.train(resume=out, progress=False)
    assert without_timings(redone.metrics) == without_timings(first.metrics)  # epochs_run 2, not 3
    assert redone.metrics["train_seconds"] == first.metrics["train_seconds"]  # from the finished checkpoint
    assert _digest(out / "model.safetensors") == before["model.safetensors"]
    assert json.loads((out / "metrics.json").read_text())["epochs_run"] == 2


class StopAfterTraining:
    """A stop request (what the CLI's SIGTERM handler sets) arriving once training is over."""

    def on_fit_end(self, trainer, result):
        trainer.stop.set()


def test_a_stop_during_the_post_training_phase_is_resumable(tiny_csv, tmp_path):
    recipe = tabular_recipe(tiny_csv, training={"epochs": 2})
    whole = dlforge.train(recipe, out=tmp_path / "whole", progress=False)
    out = tmp_path / "run"
    with pytest.raises(TrainingInterrupted):
        dlforge.train(recipe, out=out, progress=False, callbacks=[StopAfterTraining()])
    assert not (out / "metrics.json").exists()
    resumed = dlforge.train(resume=out, progress=False)
    assert without_timings(resumed.metrics) == without_timings(whole.metrics)
    assert _digest(out / "model.safetensors") == _digest(tmp_path / "whole" / "model.safetensors")


def test_resume_removes_temp_files_left_by_a_kill(tiny_csv, tmp_path):
    out = tmp_path / "run"
    with pytest.raises(TrainingInterrupted):
        dlforge.train(tabular_recipe(tiny_csv), out=out, progress=False, callbacks=[InterruptAt(step=1, epoch=1)])
    orphans = [out / ".model.safetensors.k3x9.dlforge-tmp", out / "model.safetensors.tmp",
               out / "checkpoint" / ".state.pt.a1b2.dlforge-tmp"]
    for orphan in orphans:
        orphan.write_bytes(b"\0" * 1000)
    dlforge.train(resume=out, progress=False)
    assert not any(p.exists() for p in orphans)
    assert not [p for p in out.rglob("*") if p.name.endswith((".tmp", ".dlforge-tmp"))]


def test_resume_of_a_directory_that_is_not_a_run_says_so(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(ArtifactError, match="no checkpoint to resume from: this is not a dlforge run directory"):
        dlforge.train(resume=tmp_path / "empty", progress=False)
    shutil.rmtree(tmp_path / "empty")


def test_a_kill_during_the_very_first_write_is_not_a_dead_end(tiny_csv, tmp_path):
    """Found by benchmarks/crash_resume.py: only the temp file of checkpoint/meta.json was left, and both
    --resume ("not a run directory") and --overwrite ("not a run directory") refused."""
    out = tmp_path / "run"
    (out / "checkpoint").mkdir(parents=True)
    (out / "checkpoint" / ".meta.json.x1y2.dlforge-tmp").write_text("{")
    with pytest.raises(ArtifactError, match="nothing to resume: the run was stopped before its first checkpoint"):
        dlforge.train(resume=out, progress=False)
    run = dlforge.train(tabular_recipe(tiny_csv, training={"epochs": 1}), out=out, overwrite=True, progress=False)
    assert (run.run_dir / "model.json").is_file() and not list(out.rglob("*.dlforge-tmp"))


def test_the_resume_digest_leaves_out_defaults_so_a_new_defaulted_field_keeps_old_checkpoints():
    """#16: the digest covers what the recipe says; a field added later with its default changes nothing."""
    from typing import Literal

    from pydantic import BaseModel

    from dlforge.recipe.io import load_recipe
    from dlforge.training.checkpoint import recipe_digest, recipe_identity

    class Encoder(BaseModel):
        name: Literal["mlp"] = "mlp"
        layers: list[int] = [8]

    class Old(BaseModel):  # the schema when the checkpoint was written
        lr: float = 0.01
        encoder: Encoder = Encoder()

    class EncoderLater(Encoder):
        dropout: float = 0.0

    class New(Old):  # a later version: two fields added, with defaults that keep the old behaviour
        encoder: EncoderLater = EncoderLater()
        strategy: str = "ddp"

    old = Old(lr=0.1, encoder=Encoder(layers=[4]))
    assert recipe_identity(old) == {"lr": 0.1, "encoder": {"name": "mlp", "layers": [4]}}  # the tag `name` stays
    assert recipe_digest(New(lr=0.1, encoder=EncoderLater(layers=[4]))) == recipe_digest(old)
    assert recipe_digest(New(lr=0.1, encoder=EncoderLater(layers=[4]), strategy="fsdp")) != recipe_digest(old)
    assert recipe_digest(New(lr=0.1, encoder=EncoderLater(layers=[4], dropout=0.1))) != recipe_digest(old)

    base = {"data": {"source": "x.csv"}, "inputs": [{"name": "a", "type": "number"}],
            "outputs": [{"name": "y", "type": "binary"}]}
    digest = recipe_digest(load_recipe(base))
    explicit = {**base, "training": {"strategy": "ddp", "seed": load_recipe(base).training.seed}}  # defaults written out
    assert recipe_digest(load_recipe(explicit)) == digest
    assert recipe_digest(load_recipe({**base, "training": {"seed": 1234}})) != digest
    as_category = {**base, "inputs": [{"name": "a", "type": "category"}]}  # only the tag differs
    assert recipe_digest(load_recipe(as_category)) != digest


def test_a_checkpoint_with_the_legacy_digest_still_resumes_and_a_changed_recipe_is_still_refused(tiny_csv, tmp_path):
    """Checkpoints written before the defaults-free digest hold sha256 of every field: still checked, and accepted."""
    import torch

    from dlforge.recipe.io import load_recipe
    from dlforge.training.checkpoint import legacy_recipe_digest

    out = tmp_path / "run"
    with pytest.raises(TrainingInterrupted):
        dlforge.train(tabular_recipe(tiny_csv), out=out, progress=False, callbacks=[InterruptAt(step=1, epoch=1)])
    path = out / "checkpoint" / "state.pt"
    state = torch.load(path, weights_only=True)
    assert state["recipe_digest"] == 2
    del state["recipe_digest"]
    state["recipe_sha256"] = legacy_recipe_digest(load_recipe(out / "recipe.yaml"))
    torch.save(state, path)
    shutil.copytree(out, tmp_path / "changed")
    assert dlforge.train(resume=out, progress=False).metrics["epochs_run"] == 3
    recipe = yaml.safe_load((tmp_path / "changed" / "recipe.yaml").read_text())
    recipe["training"]["seed"] = 1
    (tmp_path / "changed" / "recipe.yaml").write_text(yaml.safe_dump(recipe))
    with pytest.raises(ArtifactError, match="the checkpoint was written by a different recipe"):
        dlforge.train(resume=tmp_path / "changed", progress=False)
