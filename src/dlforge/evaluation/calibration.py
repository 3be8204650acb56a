"""Calibration: expected calibration error, reliability bins, and temperature scaling fitted on validation.

ECE (Naeini et al. 2015; Guo et al. 2017) bins rows by their top-class confidence into equal-width bins and
averages |accuracy - confidence| weighted by the bin's share of rows. Temperature scaling divides the logits by
one scalar T > 0 fitted to minimise the validation NLL: it never changes which class wins (argmax, or the sign
of a binary logit), only how sure the model says it is. Cost: one L-BFGS fit on the validation logits (ms).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F


def class_probabilities(logits: torch.Tensor, kind: str) -> torch.Tensor:
    """(n, classes) probabilities of a category (softmax) or binary ((n, 1) logit → [1 - p, p]) output."""
    logits = logits.float()
    if kind == "binary":
        positive = torch.sigmoid(logits.reshape(len(logits), -1)[:, :1])
        return torch.cat([1 - positive, positive], dim=1)
    return torch.softmax(logits, dim=-1)


def nll(logits: torch.Tensor, target: torch.Tensor, kind: str, temperature: float = 1.0) -> float:
    """Mean negative log-likelihood of the targets under logits / temperature."""
    scaled = logits.float() / temperature
    if kind == "binary":
        return float(F.binary_cross_entropy_with_logits(scaled.reshape(-1), target.float().reshape(-1)))
    return float(F.cross_entropy(scaled, target.long()))


def reliability(probs: torch.Tensor, target: torch.Tensor, bins: int = 15) -> dict:
    """Per equal-width confidence bin: rows, mean confidence, accuracy; and the ECE (a fraction, 0..1).

    `probs` is (n, classes); the confidence is the top-class probability, as in Guo et al. 2017.
    """
    confidence, predicted = probs.float().max(dim=1)
    correct = (predicted == target.long().reshape(-1)).float()
    index = torch.clamp((confidence * bins).long(), max=bins - 1)  # confidence 1.0 falls in the last bin
    count = torch.bincount(index, minlength=bins).float()
    conf_sum = torch.bincount(index, weights=confidence, minlength=bins)
    acc_sum = torch.bincount(index, weights=correct, minlength=bins)
    safe = count.clamp(min=1)
    n = max(len(confidence), 1)
    ece = float(((acc_sum - conf_sum).abs()).sum() / n)
    return {"ece": ece, "bins": bins, "count": count.long().tolist(),
            "confidence": [round(float(v), 6) if c else None for v, c in zip(conf_sum / safe, count)],
            "accuracy": [round(float(v), 6) if c else None for v, c in zip(acc_sum / safe, count)]}


def ece(probs: torch.Tensor, target: torch.Tensor, bins: int = 15) -> float:
    """Expected calibration error (fraction, 0..1) of (n, classes) probabilities against class indices."""
    return reliability(probs, target, bins)["ece"]


def fit_temperature(logits: torch.Tensor, target: torch.Tensor, kind: str, *, max_iter: int = 100) -> float:
    """The temperature T > 0 minimising the NLL of `target` under `logits` / T (L-BFGS on log T, so T stays
    positive). Returns 1.0 when the logits are constant or the fit does not improve the NLL."""
    logits, target = logits.detach().float(), target.detach()
    if len(logits) < 2 or not torch.isfinite(logits).all():
        return 1.0
    log_t = torch.zeros(1, requires_grad=True)
    optimizer = torch.optim.LBFGS([log_t], lr=0.1, max_iter=max_iter, line_search_fn="strong_wolfe")
    flat_target = target.float().reshape(-1) if kind == "binary" else target.long()

    def closure():
        optimizer.zero_grad()
        scaled = logits / log_t.exp()
        loss = (F.binary_cross_entropy_with_logits(scaled.reshape(-1), flat_target) if kind == "binary"
                else F.cross_entropy(scaled, flat_target))
        loss.backward()
        return loss

    optimizer.step(closure)
    temperature = float(log_t.detach().exp())
    if not math.isfinite(temperature) or nll(logits, target, kind, temperature) > nll(logits, target, kind):
        return 1.0
    return temperature


__all__ = ["class_probabilities", "ece", "fit_temperature", "nll", "reliability"]
