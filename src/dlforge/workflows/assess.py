"""After training, before the model is saved: calibration, fairness by group, mitigation, and the worst mistakes.

Fitting uses the validation split (temperature, group thresholds), scoring the test split (else validation),
so the before/after figures are on rows neither fit saw. Everything here is deterministic, so a resumed run's
post-training phase redoes it exactly. The result: a `postprocess` record for model.json (applied at predict
time by the Predictor), sections of metrics.json (`calibration`, `fairness`), mistakes.json and plots.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from dlforge.core.files import write_json
from dlforge.evaluation.calibration import class_probabilities, fit_temperature, nll, reliability
from dlforge.evaluation.postprocess import group_keys, threshold_predictions
from dlforge.report.calibration import plot_reliability

CELL_CHARS = 200  # an input value in mistakes.json (a long text) is cut to this many characters


@dataclass
class Assessment:
    metrics: dict = field(default_factory=dict)
    postprocess: dict = field(default_factory=dict)
    plots: list[Path] = field(default_factory=list)


def assess(recipe, trainer, prepared, table, rows: dict[str, np.ndarray], run_dir: Path) -> Assessment:
    """Calibration and fairness of the first output, the fitted post-processing, and mistakes.json."""
    out = Assessment()
    name, sig = next(iter(prepared.signature()["outputs"].items()))
    kind = sig["type"]
    part = "test" if "test" in prepared.splits else "val" if "val" in prepared.splits else None
    if part is None:
        return out
    split = prepared.splits[part]
    logits = trainer.predict_logits(split)[name].detach().cpu()
    target = split.y[name].detach().cpu()
    config = recipe.evaluation
    aligned = len(rows.get(part, [])) == len(split)  # image files may have dropped rows: then no raw values
    if kind in ("binary", "category"):
        temperature = _calibration(out, recipe, trainer, prepared, name, kind, logits, target, part, run_dir)
        scaled = logits / temperature
        if config.sensitive and aligned:
            _fairness(out, recipe, trainer, prepared, table, rows, name, kind, sig, scaled, target, part, temperature)
        elif config.sensitive:
            out.metrics["fairness"] = {"skipped": "the split's rows no longer match the data's (image files were "
                                                  "skipped), so the sensitive columns cannot be aligned"}
    else:
        scaled = logits
    if config.mistakes:
        mistakes = _mistakes(prepared, table, rows if aligned else None, name, kind, scaled, target, part,
                             config.mistakes)
        write_json(Path(run_dir) / "mistakes.json", mistakes, nonfinite="null")
    return out


def _calibration(out, recipe, trainer, prepared, name, kind, logits, target, part, run_dir) -> float:
    """ECE and NLL on the scored split; with `calibrate: temperature`, T fitted on validation and the after figures."""
    bins = recipe.evaluation.ece_bins
    before = reliability(class_probabilities(logits, kind), target, bins)
    section = {"split": part, "ece": before["ece"], "nll": round(nll(logits, target, kind), 6), "reliability": before}
    temperature = 1.0
    if recipe.evaluation.calibrate == "temperature":
        if "val" not in prepared.splits:
            section["temperature_skipped"] = "no validation split to fit it on (data.split.val is 0)"
        else:
            val = prepared.splits["val"]
            temperature = fit_temperature(trainer.predict_logits(val)[name].detach().cpu(), val.y[name].cpu(), kind)
            after = reliability(class_probabilities(logits / temperature, kind), target, bins)
            section.update({"temperature": round(temperature, 6),
                            "after": {"ece": after["ece"], "nll": round(nll(logits, target, kind, temperature), 6),
                                      "reliability": after}})
            out.postprocess["temperature"] = {name: temperature}
    out.metrics["calibration"] = section
    out.plots.append(plot_reliability(before, section.get("after", {}).get("reliability"),
                                      Path(run_dir) / "plots" / "reliability.svg", split=part))
    return temperature


def _decisions(kind: str, sig: dict, probs: torch.Tensor) -> np.ndarray:
    if kind == "binary":
        return (probs[:, 1] >= sig.get("threshold", 0.5)).long().numpy()
    return probs.argmax(1).numpy()


def _fairness(out, recipe, trainer, prepared, table, rows, name, kind, sig, scaled, target, part, temperature):
    from dlforge.evaluation.fairness import fairness_report, fit_thresholds

    config = recipe.evaluation
    binary = kind == "binary"
    columns = {c: np.asarray(table.columns[c], dtype=object)[rows[part]] for c in config.sensitive}
    probs = class_probabilities(scaled, kind)
    y_true = target.long().numpy()
    y_pred = _decisions(kind, sig, probs)
    section = {"split": part, "sensitive": list(config.sensitive),
               "before": fairness_report(y_true, y_pred, probs.numpy(), columns, binary=binary, bins=config.ece_bins,
                                             min_rows=config.min_group_rows)}
    mitigate = config.mitigate
    if mitigate is not None:
        if "val" not in prepared.splits:
            section["mitigation_skipped"] = "no validation split to fit the thresholds on (data.split.val is 0)"
        else:
            by = list(mitigate.by or config.sensitive)
            vocabularies = {c: prepared.inputs[c].state()["vocabulary"] for c in by}
            val = prepared.splits["val"]
            val_scores = class_probabilities(trainer.predict_logits(val)[name].detach().cpu() / temperature, kind)[:, 1]
            groups = fit_thresholds(val_scores.numpy(), val.y[name].long().numpy(),
                                    group_keys(val.x, vocabularies, by), constraint=mitigate.constraint)
            record = {"output": name, "method": mitigate.method, "constraint": mitigate.constraint, "by": by,
                      "seed": mitigate.seed, "fitted_on": "val", "groups": groups}
            split = prepared.splits[part]
            after = threshold_predictions(probs[:, 1].numpy(), group_keys(split.x, vocabularies, by), record,
                                          fallback=sig.get("threshold", 0.5))
            section["after"] = fairness_report(y_true, after, probs.numpy(), columns, binary=binary,
                                               bins=config.ece_bins, min_rows=config.min_group_rows)
            section["mitigation"] = {k: v for k, v in record.items() if k != "groups"}
            section["thresholds"] = groups
            out.postprocess["thresholds"] = record
    out.metrics["fairness"] = section


def _cell(value) -> object:
    if isinstance(value, (np.floating, float)):
        return None if not np.isfinite(value) else round(float(value), 6)
    if isinstance(value, (np.integer, int, bool, np.bool_)):
        return value.item() if hasattr(value, "item") else value
    if isinstance(value, np.ndarray):
        return f"(array {'x'.join(map(str, value.shape))})"
    text = str(value)
    return text if len(text) <= CELL_CHARS else text[:CELL_CHARS] + "…"


def _mistakes(prepared, table, rows, name, kind, logits, target, part, k) -> dict:
    """The k test rows the model got most wrong: highest loss among wrong predictions (classes), largest absolute
    error (numbers), with their inputs as read from the data (row = index in the data file's order)."""
    feature = prepared.outputs[name]
    if kind in ("binary", "category"):
        probs = class_probabilities(logits, kind)
        true = target.long()
        predicted = probs.argmax(1) if kind == "category" else (probs[:, 1] >= feature.config.threshold).long()
        loss = -torch.log(probs.gather(1, true.reshape(-1, 1)).squeeze(1).clamp(min=1e-12))
        wrong = (predicted != true).nonzero().reshape(-1)
        order = wrong[torch.argsort(loss[wrong], descending=True)][:k]
        labels = feature.label_names()
        found = [{"position": int(i), "true": labels[int(true[i])], "predicted": labels[int(predicted[i])],
                  "confidence": round(float(probs[i, predicted[i]]), 6), "loss": round(float(loss[i]), 6)}
                 for i in order.tolist()]
        measure = "loss"
    elif kind == "number":
        actual = feature.decode(target.reshape(-1, 1).float())
        guess = feature.decode(logits.float())
        error = np.abs(guess - actual)
        order = np.argsort(-np.nan_to_num(error, nan=-1.0))[:k]
        found = [{"position": int(i), "true": _cell(actual[i]), "predicted": _cell(guess[i]),
                  "error": _cell(error[i])} for i in order]
        measure = "absolute error"
    else:
        return {"split": part, "rows": [], "skipped": f"no mistakes list for {kind} outputs"}
    inputs = list(prepared.inputs)
    for entry in found:
        if rows is not None:
            row = int(rows[part][entry["position"]])
            entry["row"] = row
            entry["inputs"] = {c: _cell(table.columns[c][row]) for c in inputs if c in table.columns}
    return {"split": part, "output": name, "ranked_by": measure, "rows": found}


__all__ = ["Assessment", "assess"]
