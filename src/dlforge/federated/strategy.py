"""The server side: Flower's strategies (FedAvg, FedProx, FedAdam, client-level DP) and a per-round record.

`build_strategy` returns Flower's own Strategy objects; `Recorder` wraps one and writes down, for every
round, the clients sampled, the results, the failures (a client that raised, crashed or disconnected), the
clients' mean training loss, the centralised evaluation of the new global weights and the seconds taken.
"""

from __future__ import annotations

import os
import sys
import time
from typing import Callable

import numpy as np

from dlforge.core.errors import DlforgeError


def flower():
    """The flwr package, or a DlforgeError naming the extra."""
    # Flower's telemetry sends usage events over the network by default: a training tool does not phone home.
    os.environ.setdefault("FLWR_TELEMETRY_ENABLED", "0")
    try:
        import flwr
    except ImportError:
        raise DlforgeError("federated learning needs Flower (flwr), which is not installed", where="dlforge federate",
                           hint="pip install 'dlforge[federated]' (docs/federated.md: it pins typer, rich, protobuf "
                                "and cryptography below dlforge's defaults)") from None
    import logging

    logging.getLogger("flwr").setLevel(logging.ERROR)  # dlforge prints one line a round (and every failure) instead
    return flwr


def weighted_mean(weights: list[list[np.ndarray]], counts: list[int]) -> list[np.ndarray]:
    """FedAvg's aggregate: sum_k n_k w_k / sum_k n_k, array by array (the reference for the tests)."""
    total = float(sum(counts))
    return [sum(w[i] * (n / total) for w, n in zip(weights, counts)) for i in range(len(weights[0]))]


def build_strategy(fed, *, initial: list[np.ndarray], evaluate_fn: Callable, sampled: int, available: int,
                   in_process: bool):
    """Flower's FedAvg / FedProx / FedAdam for the recipe's `federated` section, wrapped in client-level DP when
    `client_dp` is set. In-process: `sampled` clients train each round out of `available`. Over gRPC
    (`available` 0): fraction * the clients connected at the round's start, at least one, so a client that
    crashed earlier never blocks a later round."""
    fl = flower()
    from flwr.server import strategy as st

    if available:
        fraction, min_fit, min_available = min(1.0, sampled / available), sampled, available
    else:
        fraction, min_fit, min_available = fed.fraction, 1, 1
    common = dict(fraction_fit=fraction, fraction_evaluate=0.0, min_fit_clients=min_fit, min_evaluate_clients=0,
                  min_available_clients=min_available, evaluate_fn=evaluate_fn, accept_failures=True,
                  initial_parameters=fl.common.ndarrays_to_parameters(initial),
                  on_fit_config_fn=lambda server_round: {"server_round": server_round, "in_process": in_process},
                  fit_metrics_aggregation_fn=_fit_metrics)
    if fed.strategy == "fedavg":
        strategy = st.FedAvg(**common)
    elif fed.strategy == "fedprox":
        strategy = st.FedProx(**common, proximal_mu=fed.proximal_mu)
    else:
        # eta_l is only passed to clients by Flower's FedAdam config; local training uses training.optimizer.lr.
        strategy = st.FedAdam(**common, eta=fed.server_lr, beta_1=fed.server_betas[0], beta_2=fed.server_betas[1],
                              tau=fed.server_tau)
    if fed.client_dp is not None:
        strategy = st.DifferentialPrivacyServerSideFixedClipping(
            strategy, noise_multiplier=fed.client_dp.noise_multiplier, clipping_norm=fed.client_dp.clipping_norm,
            num_sampled_clients=sampled)
    return strategy


def _fit_metrics(metrics: list[tuple[int, dict]]) -> dict:
    """The clients' training loss, weighted by their rows."""
    total = sum(n for n, _ in metrics)
    losses = [(n, m["train_loss"]) for n, m in metrics if "train_loss" in m]
    return {"train_loss": sum(n * v for n, v in losses) / total} if losses and total else {}


def client_dp_epsilon(fed, rounds: int) -> dict | None:
    """Client-level (epsilon, delta) after `rounds` rounds: Opacus' RDP accountant for the subsampled Gaussian
    mechanism with q = sampled / clients (McMahan et al. 2018's DP-FedAvg accounting; Flower samples a fixed
    number of clients, Poisson sampling at that rate is the standard approximation)."""
    if fed.client_dp is None:
        return None
    from dlforge.training.privacy import epsilon_spent

    dp = fed.client_dp
    q = fed.sampled() / fed.clients
    epsilon = epsilon_spent(dp.noise_multiplier, q, rounds, dp.delta, "rdp") if dp.noise_multiplier > 0 \
        else float("inf")
    return {"epsilon": epsilon, "delta": dp.delta, "noise_multiplier": dp.noise_multiplier,
            "clipping_norm": dp.clipping_norm, "sample_rate": q, "rounds": rounds, "accountant": "rdp",
            "unit": "client (all of one client's rows)"}


class Recorder:
    """A Flower Strategy that delegates to `inner` and keeps one history row per round (see module doc)."""

    def __init__(self, inner, fed, *, eval_name: str, progress: bool = True, wait_for: int = 0,
                 wait_seconds: float = 0.0):
        self.inner = inner
        self.fed = fed
        self.eval_name = eval_name
        self.progress = progress
        self.wait_for = wait_for
        self.wait_seconds = wait_seconds
        self.rows: list[dict] = []
        self.target = getattr(fed, "target_accuracy", None)
        self.reached: int | None = None  # the first round whose global accuracy reached `target`
        self._current: dict = {}
        self._started: float | None = None  # the first round's start
        self.failed_clients: list[str] = []

    # Flower's Strategy interface (duck-typed: Server only calls these six methods)
    def initialize_parameters(self, client_manager):
        return self.inner.initialize_parameters(client_manager)

    def configure_fit(self, server_round, parameters, client_manager):
        if server_round == 1 and self.wait_for:
            if not client_manager.wait_for(self.wait_for, timeout=self.wait_seconds):
                raise DlforgeError(f"only {client_manager.num_available()} of {self.wait_for} clients connected "
                                   f"within {self.wait_seconds:g} s", where="dlforge federate server",
                                   hint="start the clients (dlforge federate client RECIPE --server ADDRESS "
                                        "--partition K/N), or raise federated.wait_clients")
        if self.reached is not None:  # target reached: Flower's Server skips a round given no clients
            return []
        self._round_started = time.perf_counter()
        self._started = self._started or self._round_started
        instructions = self.inner.configure_fit(server_round, parameters, client_manager)
        self._current = {"round": server_round, "epoch": server_round, "clients_sampled": len(instructions)}
        return instructions

    def aggregate_fit(self, server_round, results, failures):
        self._current.update(clients_ok=len(results), failures=len(failures))
        if failures:
            reasons = [_failure_text(f) for f in failures]
            self.failed_clients += reasons
            if self.progress:
                print(f"round {server_round}: {len(failures)} client(s) failed ({'; '.join(reasons[:3])}); the round "
                      f"goes on with {len(results)}", file=sys.stderr)
        if not results:
            return None, {}
        parameters, metrics = self.inner.aggregate_fit(server_round, results, failures)
        if parameters is None and self.fed.client_dp is not None and failures:
            self._current["note"] = "client-DP round skipped: a sampled client failed"
        if "train_loss" in metrics:
            self._current["train.loss"] = float(metrics["train_loss"])
        return parameters, metrics

    def configure_evaluate(self, server_round, parameters, client_manager):
        return []

    def aggregate_evaluate(self, server_round, results, failures):
        return None, {}

    def evaluate(self, server_round, parameters):
        # Round 0 (the initial random weights) is not recorded, so it is not evaluated either (one test pass less);
        # nor are the rounds left after the target was reached (the weights no longer change).
        if server_round == 0 or self.reached is not None:
            return None
        out = self.inner.evaluate(server_round, parameters)
        row = dict(self._current)
        if out is not None:
            loss, metrics = out
            row.update(metrics)
        row["seconds"] = round(time.perf_counter() - self._round_started, 3)
        row["elapsed_seconds"] = round(time.perf_counter() - self._started, 3)
        dp = client_dp_epsilon(self.fed, server_round)
        if dp is not None:
            row["client_dp.epsilon"] = dp["epsilon"]
        self.rows.append(row)
        accuracy = row.get(f"{self.eval_name}.accuracy")
        if self.target is not None and isinstance(accuracy, float) and accuracy >= self.target:
            self.reached = server_round
        if self.progress:
            shown = ", ".join(f"{k} {row[k]:.4f}" for k in (f"{self.eval_name}.accuracy", f"{self.eval_name}.loss",
                                                            "train.loss") if isinstance(row.get(k), float))
            print(f"round {server_round}/{self._rounds_total()}: {row.get('clients_ok', 0)} of "
                  f"{row.get('clients_sampled', 0)} client(s) trained, {row.get('failures', 0)} failed; {shown} "
                  f"({row['seconds']:.1f} s)", file=sys.stderr)
            if self.reached is not None:
                print(f"target {self.eval_name} accuracy {self.target:g} reached in round {server_round}: stopping",
                      file=sys.stderr)
        return out

    def _rounds_total(self) -> int:
        return getattr(self, "total_rounds", self.fed.rounds)


def _failure_text(failure) -> str:
    if isinstance(failure, BaseException):
        if failure.__class__.__name__ == "GrpcBridgeClosed":
            return "a client disconnected mid-round"
        return f"{failure.__class__.__name__}: {str(failure)[:120]}"
    proxy, res = failure
    return f"client {proxy.cid}: {res.status.message[:120]}"
