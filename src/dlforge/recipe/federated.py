"""Recipe section `federated`: clients, rounds, partition, strategy and client-level DP (`dlforge federate`)."""

from __future__ import annotations

import math
import re
from typing import Annotated, Literal, Optional, Union

from pydantic import Field, field_validator

from dlforge.core.errors import did_you_mean
from dlforge.recipe._base import Strict, _field

__all__ = ["ClientDP", "FederatedConfig", "parse_partition", "PARTITION_SCHEMES"]

PARTITION_SCHEMES = ("iid", "shards:K", "dirichlet:ALPHA", "by:COLUMN")
_SCHEME_NAMES = ("iid", "shards", "dirichlet", "by")


def parse_partition(spec: str) -> tuple[str, float | int | str | None]:
    """('iid', None), ('shards', K), ('dirichlet', alpha) or ('by', column); ValueError (with a suggestion) else."""
    text = str(spec).strip()
    scheme, _, arg = text.partition(":")
    scheme = scheme.strip().lower()
    examples = "iid, shards:2, dirichlet:0.5 or by:<column>"
    if scheme not in _SCHEME_NAMES:
        raise ValueError(f"'{text}' is not a partition{did_you_mean(scheme, _SCHEME_NAMES)} (use {examples})")
    if scheme == "iid":
        if arg:
            raise ValueError(f"'{text}': iid takes no argument; write iid")
        return "iid", None
    if not arg.strip():
        raise ValueError(f"'{text}': {scheme} needs an argument after ':' (use {examples})")
    if scheme == "shards":
        if not re.fullmatch(r"\s*\d+\s*", arg) or int(arg) < 1:
            raise ValueError(f"'{text}': the number of label shards per client must be a whole number >= 1, "
                             "e.g. shards:2 (McMahan et al.'s pathological non-IID split)")
        return "shards", int(arg)
    if scheme == "dirichlet":
        try:
            alpha = float(arg)
        except ValueError:
            alpha = float("nan")
        if not math.isfinite(alpha) or alpha <= 0:
            raise ValueError(f"'{text}': the Dirichlet concentration must be a number > 0, e.g. dirichlet:0.5 "
                             "(small: each client holds few classes; large: close to iid)")
        return "dirichlet", alpha
    return "by", arg.strip()


class ClientDP(Strict):
    """Client-level differential privacy (DP-FedAvg, McMahan et al. 2018): every client's update is clipped to
    `clipping_norm` on the server and Gaussian noise of std noise_multiplier * clipping_norm / sampled clients is
    added to their mean (Flower's DifferentialPrivacyServerSideFixedClipping). It protects whether a whole
    client took part, not single rows; epsilon is reported by the RDP accountant."""

    noise_multiplier: float = _field(1.0, "Noise std in units of the clipping norm (per sampled client).", ge=0, le=100)
    clipping_norm: float = _field(1.0, "Largest L2 norm of one client's update (new minus global weights).", gt=0)
    delta: float = _field(1e-5, "The delta of the (epsilon, delta) guarantee; below 1 / clients.", gt=0, lt=1)


class FederatedConfig(Strict):
    """Federated training with Flower (`dlforge federate`): the global model is averaged from client updates;
    each client trains `local_epochs` epochs of batch `batch_size` with training.optimizer on its own rows."""

    clients: int = _field(10, "How many clients the training rows are split across.", ge=1, le=10_000)
    fraction: float = _field(0.1, "Share of the clients sampled each round (C in McMahan et al. 2017; at least "
                                  "one client).", gt=0, le=1)
    rounds: int = _field(10, "Communication rounds (the most run, with target_accuracy).", ge=1, le=100_000)
    target_accuracy: Optional[float] = _field(
        None, "Stop after the first round whose global model reaches this accuracy on the evaluated split (test, "
              "else validation); metrics.json's federated.target records the round. Needs a class target.",
        gt=0, le=1)
    evaluate: Literal["auto", "val"] = _field(
        "auto", "What the server scores each round: auto (the test split if one is held out, else validation; "
                "validation too when there is one), val (the validation split only, every round and at the end: "
                "the test rows are never scored, for choosing hyperparameters such as the client lr; needs "
                "data.split.val > 0).")
    partition: str = _field("iid", "How the training rows are split across clients: iid (random equal parts), "
                                   "shards:K (sorted by label, cut into clients*K shards, K per client: "
                                   "pathological non-IID), dirichlet:ALPHA (per-class Dirichlet proportions), "
                                   "by:COLUMN (one client per value of a data column).")
    strategy: Literal["fedavg", "fedprox", "fedadam"] = _field(
        "fedavg", "Server strategy: fedavg (weighted mean of client weights), fedprox (FedAvg with a proximal term "
                  "mu/2 ||w - w_global||^2 in every client's loss), fedadam (Adam on the server over the mean update).")
    proximal_mu: float = _field(0.01, "FedProx's mu (strategy fedprox only).", ge=0)
    server_lr: float = _field(0.01, "FedAdam's server learning rate eta (strategy fedadam only).", gt=0)
    server_betas: tuple[Annotated[float, Field(ge=0, lt=1)], Annotated[float, Field(ge=0, lt=1)]] = _field(
        (0.9, 0.99), "FedAdam's beta1, beta2.")
    server_tau: float = _field(1e-3, "FedAdam's adaptivity tau (its epsilon).", gt=0)
    local_epochs: int = _field(1, "E: epochs of local training per round.", ge=1, le=1000)
    batch_size: Union[Annotated[int, Field(ge=1)], Literal["full"]] = _field(
        10, "B: local batch size; 'full' is one batch of all the client's rows.")
    round_timeout: Optional[float] = _field(
        None, "Seconds a round waits for its clients (real processes); a client past it counts as failed.", gt=0)
    wait_clients: float = _field(120.0, "Seconds `federate server` waits for its clients to connect.", gt=0)
    client_dp: Optional[ClientDP] = _field(None, "Client-level DP: clip and noise the client updates.")
    secure_aggregation: bool = _field(
        False, "Flower's SecAgg+ (the server sees only the sum of masked client updates): runs a loopback SuperLink and "
               "one SuperNode process per client (at most 16); see docs/federated.md.")

    @field_validator("partition")
    @classmethod
    def _partition_parses(cls, spec: str) -> str:
        parse_partition(spec)
        return spec.strip()


    def sampled(self) -> int:
        """Clients trained each round: fraction * clients, at least one."""
        return max(1, int(self.fraction * self.clients))
