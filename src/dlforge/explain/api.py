"""`dlforge.explain(run, inputs, method=...)`: attributions for every input of any model, with the sanity check.

One path for images, text, tables and mixes (explain/spaces.py): encode the inputs as `predict` does,
attribute on each input's space with the chosen Captum method, reduce to one value per pixel, token or
column, and run the model-randomisation test (explain/sanity.py) on the same rows. Files are written by
`Explanation.save` (explain/files.py); the CLI adds nothing but argument parsing.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from dlforge.artifact.inputs import to_table
from dlforge.artifact.predictor import Predictor, load
from dlforge.core.errors import PredictError
from dlforge.data.prepare import encode
from dlforge.explain import sanity as sanity_check
from dlforge.explain.methods import Options, describe_model, get_method
from dlforge.explain.spaces import Space, SpaceForward, baselines, build_spaces, embed, reduce, trim_padding


@dataclass
class Explanation:
    """What `explain` found. Maps are numpy arrays keyed by input name; rows follow the inputs' order.

    attributions: raw, in each input's space (image (N,C,H,W); text (N,L,dim) on the token embeddings; a column
    (N,width) or (N,embedding dim)); scores: reduced to (N,H,W) pixels, (N,L) tokens or (N,) per column;
    contributions: each input's signed total per row (for IG they add up to f(input) - f(reference));
    shares: each input's part of the explanation per row (which modality decided): |contribution| over their sum
    (attribution mass for unsigned methods);
    sanity: the randomisation test (`spearman` mean and per row, `randomised` layers, `warning`).
    """

    run: str
    method: str
    output: str
    model_type: str
    signed: bool
    spaces: list[Space]
    labels: list[str] | None
    predicted: list
    explained: list
    attributions: dict[str, np.ndarray]
    scores: dict[str, np.ndarray]
    contributions: dict[str, np.ndarray]
    shares: dict[str, np.ndarray]
    tokens: dict[str, list[list[str]]] = field(default_factory=dict)
    images: dict[str, np.ndarray] = field(default_factory=dict)
    values: dict[str, list] = field(default_factory=dict)
    sanity: dict = field(default_factory=dict)
    attention: dict[str, dict] = field(default_factory=dict)
    convergence_delta: list[float] | None = None
    internal_batch_size: int | None = None  # IG's rows per chunk (measured against the memory budget)
    seconds: float = 0.0

    @property
    def warnings(self) -> list[str]:
        return [self.sanity["warning"]] if self.sanity.get("warning") else []

    def summary(self) -> dict:
        """The JSON-able summary written to explanation.json."""
        rows = []
        for i in range(len(self.predicted)):
            rows.append({"predicted": _plain(self.predicted[i]), "explained": _plain(self.explained[i]),
                         "contributions": {n: float(v[i]) for n, v in self.contributions.items()},
                         "shares": {n: float(v[i]) for n, v in self.shares.items()}})
        return {"run": self.run, "method": self.method, "output": self.output, "model_type": self.model_type,
                "rows": rows, "sanity": {k: v for k, v in self.sanity.items()},
                "convergence_delta": self.convergence_delta,
                "internal_batch_size": self.internal_batch_size, "seconds": round(self.seconds, 3),
                "warnings": self.warnings}

    def save(self, out: str | Path) -> list[Path]:
        from dlforge.explain.files import save

        return save(self, Path(out))


def _plain(value):
    return value.item() if isinstance(value, np.generic) else value


def check_inputs(data, signature: dict) -> None:
    """A list of strings given to a one-input model must be what that input takes: image files for an image
    model, texts for a text model. Caught here with the model's inputs named, before any file is opened."""
    inputs = signature["inputs"]
    if len(inputs) != 1 or not isinstance(data, (list, tuple)) or not data:
        return
    if not all(isinstance(v, (str, Path)) for v in data):
        return
    (name, sig), = inputs.items()
    looks_like_files = all(Path(str(v)).suffix.lower() in (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif",
                                                             ".tiff") or Path(str(v)).is_file() for v in data)
    expected = f"{name} ({sig['type']}{' ' + 'x'.join(map(str, sig['shape'])) if 'shape' in sig else ''})"
    if sig["type"] == "image" and not looks_like_files:
        raise PredictError(f"this model explains images, but got text such as {str(data[0])[:40]!r}",
                           hint=f"the model's input is {expected}: pass image files (dlforge explain RUN digit.png)")
    if sig["type"] == "text" and looks_like_files and not isinstance(data[0], str):
        raise PredictError("this model explains text, but got file paths", hint=f"the model's input is {expected}: "
                           "pass sentences (dlforge explain RUN --text \"...\")")
    if sig["type"] in ("number", "binary", "category", "sequence"):
        raise PredictError(f"this model's input is {expected}; a list of strings cannot be explained",
                           hint="pass a table of the model's input columns (dlforge explain RUN --data rows.csv)")


def resolve_target(predictor: Predictor, output: str, target, predicted_idx: torch.Tensor) -> torch.Tensor:
    """The class index explained per row: the predicted one, or the label `target` names (checked)."""
    if target is None:
        return predicted_idx
    labels = predictor.labels(output)
    if labels is None:
        raise PredictError(f"--target names a class, but output '{output}' predicts numbers", where="--target",
                           hint="drop --target: the number output itself is explained")
    names = [str(label) for label in labels]
    if str(target) not in names:
        shown = ", ".join(names[:30]) + (" ..." if len(names) > 30 else "")
        raise PredictError(f"label {str(target)!r} does not exist for output '{output}'", where="--target",
                           hint=f"labels: {shown}")
    return torch.full_like(predicted_idx, names.index(str(target)))


def _predicted_index(predictor: Predictor, output: str, logits: torch.Tensor) -> tuple[list, torch.Tensor]:
    decoded = list(predictor.outputs[output].decode(logits))
    labels = predictor.labels(output)
    if labels is None:  # a number: one column, index 0
        return decoded, torch.zeros(len(decoded), dtype=torch.long)
    if np.ndim(decoded[0]) or len(decoded) != logits.shape[0] or decoded[0] not in labels:  # multilabel
        return decoded, logits.argmax(-1)
    return decoded, torch.tensor([labels.index(d) for d in decoded], dtype=torch.long)


def _tokens(predictor: Predictor, name: str, ids: torch.Tensor, pad_id: int) -> list[list[str]]:
    tokenizer = predictor.inputs[name].tokenizer_
    lookup = getattr(tokenizer, "id_to_token", None)
    vocab = None if lookup else {i: t for t, i in tokenizer.get_vocab().items()}
    rows = []
    for row in ids.tolist():
        real = [i for i in row if i != pad_id]
        rows.append([(lookup(i) if lookup else vocab.get(i)) or f"<{i}>" for i in real])
    return rows


def explain(run, inputs, *, method: str = "integrated_gradients", target=None, output: str | None = None,
            sanity: bool = True, attention: bool = False, n_steps: int = 50, internal_batch_size: int | None = None,
            memory_budget_mb: float = 1024, out: str | Path | None = None) -> Explanation:
    """Attribute the prediction for `inputs` (anything `predict` takes: image paths, texts, a dict, a DataFrame
    or a Table) to each input of the model in `run` (a run directory or a loaded Predictor).

    method: integrated_gradients | saliency | occlusion | gradient_shap | grad_cam (conv image models) |
    kernel_shap (table models: Shapley values of the columns);
    target: the label to explain (default: the predicted one); output: which output (default: the first);
    sanity: run the model-randomisation test (default on; it doubles the time); attention: attention maps
    and rollout for transformer/minilm text inputs; internal_batch_size: rows per forward inside IG (default:
    as many as keep the activations saved for one backward under `memory_budget_mb`, measured on the model,
    at most the recipe's eval batch size), so IG's n_steps x rows never run out of memory; out: also write there.
    """
    start = time.perf_counter()
    predictor = run if isinstance(run, Predictor) else load(run)
    model = predictor.model.eval()
    spaces = build_spaces(model, predictor.signature, predictor.recipe)
    chosen = get_method(method, model, spaces)
    output = output or predictor.output_names[0]
    if output not in predictor.signature["outputs"]:
        raise PredictError(f"output '{output}' does not exist", where="--output",
                           hint=f"outputs: {', '.join(predictor.output_names)}")
    out_type = predictor.signature["outputs"][output]["type"]
    check_inputs(inputs, predictor.signature)
    table = to_table(inputs, predictor.signature["inputs"])
    x = trim_padding(encode(table, predictor.inputs, None).x, spaces)
    with torch.no_grad():
        logits = model(x)[output].float()
    predicted, predicted_idx = _predicted_index(predictor, output, logits)
    target_idx = resolve_target(predictor, output, target, predicted_idx)
    labels = predictor.labels(output)
    explained = [labels[i] for i in target_idx.tolist()] if labels else predicted
    options = Options(n_steps=n_steps, internal_batch_size=internal_batch_size, most_rows=predictor.batch_size,
                      memory_budget=int(memory_budget_mb * 2**20))
    keep_ids = {s.name: predictor.inputs[s.name].dropout_ids()["keep_ids"] for s in spaces if s.kind == "tokens"}

    def attribute(m) -> dict[str, np.ndarray]:
        forward = SpaceForward(m, spaces, output, out_type)
        try:
            values = embed(m, spaces, x)
            refs = baselines(m, spaces, x, keep_ids)
            result = chosen.fn(forward, values, refs, target_idx, forward.id_args(x), spaces, options)
        finally:
            forward.close()
        return {s.name: a.detach().float() for s, a in zip(spaces, result)}

    raw = attribute(model)
    deltas = list(options.deltas) if method == "integrated_gradients" else None
    scores = {s.name: reduce(s, raw[s.name], signed=chosen.signed).numpy() for s in spaces}
    masks = {s.name: (x[s.name] != s.pad_id).numpy() for s in spaces if s.kind == "tokens"}
    for name, mask in masks.items():
        scores[name] = scores[name] * mask
    contributions = {n: v.reshape(v.shape[0], -1).sum(1) for n, v in scores.items()}
    # Shares: of the signed totals' magnitudes (for IG they split f(input) - f(reference) between the inputs);
    # for unsigned maps, of the attribution mass. Mass alone would favour inputs with many elements (pixels).
    mass = ({n: np.abs(v) for n, v in contributions.items()} if chosen.signed else
            {n: np.abs(raw[n].numpy()).reshape(len(predicted), -1).sum(1) for n in raw})
    total = np.maximum(sum(mass.values()), 1e-30)
    shares = {n: m / total for n, m in mass.items()}

    result = Explanation(
        run=str(predictor.run_dir), method=method, output=output, model_type=describe_model(spaces),
        signed=chosen.signed, spaces=spaces, labels=labels, predicted=predicted, explained=explained,
        attributions={n: a.numpy() for n, a in raw.items()}, scores=scores, contributions=contributions,
        shares=shares, convergence_delta=deltas, internal_batch_size=options.internal_batch_size)
    for s in spaces:
        if s.kind == "tokens":
            result.tokens[s.name] = _tokens(predictor, s.name, x[s.name], s.pad_id)
        elif s.kind == "image":
            result.images[s.name] = x[s.name].numpy()
        elif s.kind == "column":
            result.values[s.name] = [_plain(v) for v in table.columns[s.name]]
    if sanity:
        randomised, layers = sanity_check.randomised(model, spaces)
        rscores = {s.name: reduce(s, a, signed=chosen.signed).numpy() for s, a in
                   zip(spaces, attribute(randomised).values())}
        corr = sanity_check.spearman(sanity_check.flat_maps(scores, masks), sanity_check.flat_maps(rscores, masks))
        result.sanity = {"test": "model randomisation (Adebayo et al. 2018)", "spearman": float(corr.mean()),
                         "per_row": [round(float(c), 4) for c in corr], "threshold": sanity_check.THRESHOLD,
                         "randomised": layers, "warning": sanity_check.verdict(corr, method)}
    if attention:
        result.attention = _attention(predictor, spaces, x)
    result.seconds = time.perf_counter() - start
    if out is not None:
        result.save(out)
    return result


def _attention(predictor: Predictor, spaces: list[Space], x: dict[str, torch.Tensor]) -> dict[str, dict]:
    from dlforge.core.errors import ModelError
    from dlforge.explain.attention import attention_maps, rollout, token_relevance

    token_spaces = [s for s in spaces if s.kind == "tokens"]
    if not token_spaces:
        raise ModelError("--attention needs a text input with a transformer or minilm encoder; this model has no "
                         "text input", where="--attention")
    names = {f.name: f.encoder.name for f in predictor.recipe.inputs if f.name in {s.name for s in token_spaces}}
    found = {}
    for s in token_spaces:
        encoder = predictor.model.encoders[s.name]
        ids = x[s.name]
        maps = attention_maps(encoder, names[s.name], ids, s.pad_id)
        valid = ids != s.pad_id
        rolled = rollout(maps, valid)
        pooling = getattr(encoder, "pooling", None) or getattr(getattr(encoder, "backbone", None), "pooling", "mean")
        found[s.name] = {"maps": np.stack([m.numpy() for m in maps]), "rollout": rolled.numpy(),
                         "relevance": (token_relevance(rolled, valid, pooling) * valid).numpy()}
    return found


__all__ = ["Explanation", "check_inputs", "explain", "resolve_target"]
