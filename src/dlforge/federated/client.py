"""A federated client: local training of the global weights on one client's rows, with the project trainer.

`LocalTraining.fit` builds the recipe's trainer (training/setup.py: the same seed handling, loss weights and
batch augmentation as `dlforge train`) on the client's rows, loads the global weights, and runs
`local_epochs` epochs of the trainer's own step over its in-memory batches (no per-sample Python, one host
sync per client for the loss). FedProx adds mu/2 * ||w - w_global||^2 through the trainer's loss hooks.
`DlforgeClient` is Flower's NumPyClient around it; the same class runs in-process (simulation) and in a
`dlforge federate client` process over gRPC.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import numpy as np
import torch

from dlforge.data.batches import epoch_batches
from dlforge.data.prepare import Encoded, Prepared
from dlforge.training.setup import build_training


def model_weights(model: torch.nn.Module) -> list[np.ndarray]:
    """The model's state (parameters and buffers) as numpy arrays, in state_dict order: what Flower sends."""
    return [t.detach().cpu().numpy().copy() for t in model.state_dict().values()]


def fast_layout(model: torch.nn.Module) -> torch.nn.Module:
    """Channels-last weights for a model with 2-d convolutions on the CPU, in place (same Parameter objects, so an
    optimizer built on them still holds them). oneDNN's convolutions and max-pooling run on NHWC without the
    layout reorders NCHW needs: measured on McMahan's CNN at batch 10, 13-15 instead of 15-16 ms a training step
    and half the evaluation time (benchmarks/federated.md). Inputs stay NCHW; weights sent and received are
    plain C-ordered arrays either way (`model_weights` copies, `load_state_dict` copies into the layout)."""
    convs = [m for m in model.modules() if isinstance(m, torch.nn.Conv2d)]
    if convs and all(p.device.type == "cpu" for p in model.parameters()):
        model.to(memory_format=torch.channels_last)
    return model


def load_weights(model: torch.nn.Module, weights: list[np.ndarray]) -> None:
    state = model.state_dict()
    if len(weights) != len(state):
        raise ValueError(f"{len(weights)} arrays received for a model of {len(state)} tensors")
    model.load_state_dict({k: torch.as_tensor(np.asarray(w), dtype=v.dtype).reshape(v.shape)
                           for (k, v), w in zip(state.items(), weights)})


def subset(split: Encoded, rows: np.ndarray) -> Encoded:
    index = torch.as_tensor(rows, dtype=torch.long)
    return Encoded(x={k: v.index_select(0, index) for k, v in split.x.items()},
                   y={k: v.index_select(0, index) for k, v in split.y.items()})


class Proximal:
    """FedProx's proximal term (Li et al. 2020) as a trainer loss hook: mu/2 * sum ||w - w_anchor||^2."""

    def __init__(self, mu: float):
        self.mu = mu
        self.anchor: list[torch.Tensor] = []

    def set_anchor(self, model: torch.nn.Module) -> None:
        self.anchor = [p.detach().clone() for p in model.parameters() if p.requires_grad]

    def term(self, model: torch.nn.Module) -> torch.Tensor:
        params = [p for p in model.parameters() if p.requires_grad]
        return 0.5 * self.mu * sum((p - a).pow(2).sum() for p, a in zip(params, self.anchor))

    def __call__(self, trainer, logits, targets, loss):
        return loss + self.term(trainer.model) if self.mu else loss


class LocalTraining:
    """Local epochs on a client's rows starting from given weights; returns the new weights, rows and mean loss."""

    def __init__(self, recipe, prepared: Prepared, *, work_dir: Path | None = None):
        fed = recipe.federated
        self.recipe = recipe.model_copy(deep=True)
        self.recipe.training.epochs = fed.local_epochs
        self.recipe.training.batch_size = fed.batch_size
        self.recipe.training.early_stopping = None
        self.recipe.training.callbacks = []
        self.prepared = prepared
        self.train = prepared.splits["train"]
        self.work_dir = Path(work_dir) if work_dir is not None else Path(tempfile.mkdtemp(prefix="dlforge-fed-"))
        self.seed = recipe.training.seed

    def fit(self, rows: np.ndarray, weights: list[np.ndarray], *, seed: int, mu: float = 0.0):
        recipe = self.recipe.model_copy(deep=True)
        recipe.training.seed = int(seed) % 2**63
        prox = Proximal(mu)
        split = subset(self.train, rows)
        built = build_training(recipe, self.prepared, run_dir=self.work_dir, splits={"train": split},
                               loss_hooks=(prox,) if mu else ())
        trainer = built.trainer
        fast_layout(trainer.model)
        load_weights(trainer.model, weights)
        prox.set_anchor(trainer.model)
        trainer.model.train()
        for _ in range(recipe.training.epochs):
            permutation = trainer.batches.permutation()
            for x, y in epoch_batches(trainer.train, trainer.batches.slices(permutation), workers=0):
                trainer.step(x, y)
        loss = trainer.running_loss()  # the one host sync of this client's round
        return model_weights(trainer.model), len(split), loss


def make_client(local: LocalTraining, rows: np.ndarray, cid: int, *, crash_at_round: int | None = None):
    """Flower's NumPyClient for client `cid` (1-based) holding `rows` of the training split."""
    import flwr as fl

    class DlforgeClient(fl.client.NumPyClient):
        def get_parameters(self, config):
            raise RuntimeError("the server holds the initial weights")

        def fit(self, parameters, config):
            server_round = int(config.get("server_round", 0))
            if crash_at_round is not None and server_round == crash_at_round:
                if config.get("in_process"):
                    raise RuntimeError(f"client {cid} failed in round {server_round} (injected)")
                os._exit(3)  # a process dying mid-round, as a killed or crashed client does
            seed = local.seed + 1_000_003 * server_round + cid
            weights, n, loss = local.fit(rows, parameters, seed=seed, mu=float(config.get("proximal_mu", 0.0)))
            return weights, n, {"train_loss": float(loss), "client": int(cid)}

        def evaluate(self, parameters, config):
            return 0.0, len(rows), {}

    return DlforgeClient()
