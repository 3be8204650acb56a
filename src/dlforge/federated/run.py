"""`dlforge federate`: a recipe trained across clients with Flower; the global model is a normal run directory.

Three ways to run the same client and server code:
  - `simulate`: one process, no Ray. Flower's own `Server` drives its Strategy over in-process client proxies
    that call each sampled client's NumPyClient in turn (flower#5855, #4476: the Ray simulation engine is what
    hangs and runs out of memory, so it is not used);
  - `serve` (`dlforge federate server`): Flower's gRPC server (`flwr.server.start_server`, the legacy gRPC
    fleet API of flwr 1.27) on a loopback address by default;
  - `connect` (`dlforge federate client`): Flower's gRPC client (`flwr.client.start_client`) training partition
    K of N.

Every process reads the recipe's data the same way (same seed, same split, same fitted preprocessing); a client
trains only on its partition of the training split, the server only evaluates (on test, else validation).
"""

from __future__ import annotations

import errno
import json
import random
import socket
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from dlforge.artifact.format import save_model, save_run_json, split_record
from dlforge.core.errors import DataError, DlforgeError
from dlforge.core.files import write_json, write_text
from dlforge.data import prepare, read_table
from dlforge.data.prepare import Prepared
from dlforge.evaluation.metrics import flatten
from dlforge.federated.client import (LocalTraining, fast_layout, load_weights, make_client, model_weights,
                                      subset)
from dlforge.federated.partition import Partition, parse_client_slot, partition_rows
from dlforge.federated.strategy import Recorder, build_strategy, client_dp_epsilon, flower
from dlforge.recipe.federated import FederatedConfig, parse_partition
from dlforge.recipe.io import dump_recipe, load_recipe, recipe_base_dir
from dlforge.report import plot_curves, write_report
from dlforge.training.setup import build_training
from dlforge.workflows.evaluate import derive_split

DEFAULT_ADDRESS = "127.0.0.1:9092"


@dataclass
class Setup:
    recipe: object
    prepared: Prepared
    partition: Partition
    rows: dict
    n_rows: int
    base_dir: Path
    recipe_path: str | None


@dataclass
class FederatedResult:
    run_dir: Path
    metrics: dict
    history: list[dict]


def field_overrides(overrides, **fields) -> list[str]:
    return [*(overrides or []), *(f"federated.{k}={v}" for k, v in fields.items() if v is not None)]


def load_setup(recipe, overrides=None, *, progress: bool = True, split_clients: bool = True, **fields) -> Setup:
    """Recipe (with `fields` as --set federated.<field>=...), data, split, fitted preprocessing and the partition."""
    recipe_path = str(recipe) if isinstance(recipe, (str, Path)) else None
    overrides = list(overrides or [])
    own = [o for o in overrides if o.startswith("federated.")]
    recipe = load_recipe(recipe, [o for o in overrides if o not in own])
    if recipe.federated is None:  # every field has a default: a recipe without the section federates with them
        recipe.federated = FederatedConfig()
    recipe = load_recipe(recipe, field_overrides(own, **fields))
    if recipe.training.privacy is not None:
        raise DlforgeError("training.privacy (DP-SGD inside each client) does not combine with `dlforge federate` yet",
                           where="training.privacy", hint="remove it, and use federated.client_dp for client-level DP "
                                                          "(docs/federated.md)")
    target_type = recipe.outputs[0].type if recipe.outputs else None
    if recipe.federated.target_accuracy is not None and target_type not in ("category", "binary"):
        raise DlforgeError(f"federated.target_accuracy needs a category or binary output; '{recipe.outputs[0].name}' "
                           f"is {target_type}", where="federated.target_accuracy",
                           hint="remove target_accuracy (the run then goes for federated.rounds rounds)")
    if recipe.training.optimizer.lr == "auto":
        raise DlforgeError("lr: auto runs a range test on pooled data, which a federated run does not have",
                           where="training.optimizer.lr", hint="set a number (e.g. run `dlforge lr-find` on one "
                                                               "client's data and use its suggestion)")
    base_dir = recipe_base_dir(recipe)
    if recipe.training.threads:
        torch.set_num_threads(recipe.training.threads)
    table = read_table(recipe, base_dir)
    rows = derive_split(recipe, table)
    scheme, arg = parse_partition(recipe.federated.partition)
    column = None
    if scheme == "by":
        if arg not in table.columns:
            from dlforge.core.errors import did_you_mean

            raise DataError(f"by:{arg}: the data has no column '{arg}'{did_you_mean(arg, list(table.columns))}",
                            where="federated.partition", hint=f"columns: {', '.join(list(table.columns)[:20])}")
        column = np.asarray(table.columns[arg])[rows["train"]]
    prepared = prepare(recipe, table=table)
    if recipe.federated.evaluate == "val" and "val" not in prepared.splits:
        raise DataError("federated.evaluate: val scores the validation split each round, and the recipe holds out "
                        "none", where="data.split.val", hint="set data.split.val (e.g. 0.1: a tenth of the training "
                                                             "rows, taken before the partition)")
    train = prepared.splits["train"]
    if column is not None and len(column) != len(train):
        raise DataError(f"by:{arg}: {len(train)} training rows were kept of {len(column)} (unreadable files were "
                        "skipped), so the column no longer lines up", where="federated.partition",
                        hint="fix or remove the unreadable files, or use iid / shards / dirichlet")
    target = recipe.outputs[0]
    labels, names = None, None
    if target.type in ("category", "binary"):
        labels = train.y[target.name].cpu().numpy().astype(np.int64).reshape(len(train), -1)[:, 0]
        names = prepared.signature()["outputs"][target.name].get("labels")
    part = partition_rows(recipe.federated.partition, recipe.federated.clients, labels=labels, column=column,
                          seed=recipe.training.seed, class_names=names) if split_clients else None
    if progress:
        for line in part.summary() if part else []:
            print(line, file=sys.stderr)
    return Setup(recipe, prepared, part, rows, table.n_rows, base_dir, recipe_path)


# ---------------------------------------------------------------- the server's side
class GlobalModel:
    """The global weights' model on the server, and their centralised evaluation (test split, else validation)."""

    def __init__(self, setup: Setup, work_dir: Path):
        self.setup = setup
        prepared = setup.prepared
        only_val = setup.recipe.federated.evaluate == "val"
        self.eval_name = "val" if only_val or "test" not in prepared.splits else "test"
        self.parts = ("val",) if only_val else ("val", "test")
        if self.eval_name not in prepared.splits:
            raise DataError("federated training evaluates the global model on a test or validation split, and the "
                            "recipe holds out none", where="data.split", hint="set data.split.test (e.g. 0.2)")
        built = build_training(setup.recipe, prepared, run_dir=work_dir,
                               splits={"train": subset(prepared.splits["train"], np.arange(1)),
                                       **({"val": prepared.splits["val"]} if "val" in prepared.splits else {})})
        self.trainer = built.trainer
        self.model = fast_layout(built.model)

    def initial(self) -> list[np.ndarray]:
        return model_weights(self.trainer.model)

    def evaluate_fn(self, server_round, parameters, config):
        load_weights(self.trainer.model, parameters)
        row = {}
        for part in self.parts:
            if part in self.setup.prepared.splits:
                row.update(flatten(self.trainer.evaluate(self.setup.prepared.splits[part]), part))
        return row.get(f"{self.eval_name}.loss", float("nan")), row


def federated_run_dir(recipe, out, overwrite: bool) -> Path:
    run_dir = Path(out) if out is not None else Path("runs") / f"{recipe.name}-federated"
    if run_dir.exists() and any(run_dir.iterdir()):
        if not overwrite:
            raise DlforgeError(f"{run_dir} already exists and is not empty", where="--out",
                               hint="pass --overwrite or choose another --out")
        if not ((run_dir / "recipe.yaml").is_file() and (run_dir / "model.json").is_file()):
            raise DlforgeError(f"{run_dir} is not a dlforge run directory; --overwrite replaces run directories only",
                               where="--out", hint="choose a new or empty --out directory")
        import shutil

        shutil.rmtree(run_dir)
    return run_dir


def run_server(setup: Setup, server_fn, *, out, overwrite: bool, progress: bool, mode: str,
                sampled: int, available: int, wait_for: int = 0, extra: dict | None = None) -> FederatedResult:
    """Build the strategy, run `server_fn(strategy) -> elapsed seconds`, then write the run directory."""
    recipe, fed = setup.recipe, setup.recipe.federated
    run_dir = federated_run_dir(recipe, out, overwrite)
    run_dir.mkdir(parents=True, exist_ok=True)
    write_json(run_dir / "checkpoint" / "meta.json",
               {"base_dir": str(setup.base_dir), **({"recipe_path": setup.recipe_path} if setup.recipe_path else {})})
    random.seed(recipe.training.seed)  # Flower's client sampling (random.sample): the same clients every run
    global_model = GlobalModel(setup, run_dir / "checkpoint")
    inner = build_strategy(fed, initial=global_model.initial(), evaluate_fn=global_model.evaluate_fn,
                           sampled=sampled, available=available, in_process=mode == "simulation")
    recorder = Recorder(inner, fed, eval_name=global_model.eval_name, progress=progress, wait_for=wait_for,
                        wait_seconds=fed.wait_clients)
    started = time.perf_counter()
    server_fn(recorder)
    seconds = time.perf_counter() - started
    if not recorder.rows:
        raise DlforgeError("no round finished: no global model to save", where="dlforge federate",
                           hint="see the failures above")
    model = global_model.trainer.model  # holds the last weights evaluated: the final global model
    return _write_run(setup, run_dir, model, global_model, recorder, seconds=seconds, mode=mode, sampled=sampled,
                      progress=progress, extra=extra)


def _write_run(setup: Setup, run_dir: Path, model, global_model: GlobalModel, recorder: Recorder, *, seconds: float,
               mode: str, sampled: int, progress: bool, extra: dict | None = None) -> FederatedResult:
    recipe, prepared, fed = setup.recipe, setup.prepared, setup.recipe.federated
    trainer = global_model.trainer
    metrics = {part: trainer.evaluate(prepared.splits[part], detail=True) for part in global_model.parts
               if part in prepared.splits}
    history = recorder.rows
    accuracy_key = f"{global_model.eval_name}.accuracy"
    rounds_to = {}
    for target in (0.97, 0.98, 0.99):
        hit = next((r["round"] for r in history if r.get(accuracy_key, 0.0) >= target), None)
        rounds_to[f"{target:.2f}"] = hit
    federated = {"mode": mode, "strategy": fed.strategy, "clients": fed.clients, "sampled_per_round": sampled,
                 "rounds": len(history), "local_epochs": fed.local_epochs, "batch_size": fed.batch_size,
                 "partition": setup.partition.as_dict() if setup.partition is not None else fed.partition,
                 "failures": int(sum(r.get("failures", 0) for r in history)),
                 "failed_clients": recorder.failed_clients[:50],
                 f"rounds_to_{global_model.eval_name}_accuracy": rounds_to,
                 "evaluated_on": global_model.eval_name}
    if fed.target_accuracy is not None:
        federated["target"] = {"accuracy": fed.target_accuracy, "split": global_model.eval_name,
                               "reached_round": recorder.reached, "max_rounds": fed.rounds}
    if fed.strategy == "fedprox":
        federated["proximal_mu"] = fed.proximal_mu
    federated.update(extra or {})
    dp = client_dp_epsilon(fed, len(history))
    if dp is not None:
        federated["client_dp"] = dp
    metrics.update({"train_seconds": round(seconds, 3), "epochs_run": len(history), "best_epoch": None,
                    "stopped_early": recorder.reached is not None and len(history) < fed.rounds, "data": prepared.report, "federated": federated})
    save_model(run_dir, recipe, prepared.inputs, prepared.outputs, model.cpu())
    save_run_json(run_dir, source=recipe.data.source, base_dir=setup.base_dir,
                  split=split_record(setup.rows, n_rows=setup.n_rows, split_config=recipe.data.split))
    write_text(run_dir / "recipe.yaml", dump_recipe(recipe))
    write_json(run_dir / "metrics.json", metrics, nonfinite="null")
    write_text(run_dir / "history.csv", _history_csv(history))
    curves = [{**{k.replace(f"{global_model.eval_name}.", "val.", 1) if global_model.eval_name == "test" else k: v
                  for k, v in row.items()}} for row in history]
    plots = plot_curves(curves, run_dir / "plots")
    write_report(run_dir, name=f"{recipe.name} (federated, {fed.strategy}, {len(history)} rounds; curves: "
                               f"{global_model.eval_name} split each round)", metrics=metrics,
                 recipe_yaml=dump_recipe(recipe), plots=plots)
    meta = json.loads((run_dir / "checkpoint" / "meta.json").read_text(encoding="utf-8"))
    write_json(run_dir / "checkpoint" / "meta.json", {**meta, "complete": True})
    if progress:
        final = metrics.get(global_model.eval_name, {}).get("accuracy")
        shown = f"; {global_model.eval_name} accuracy {final:.4f}" if isinstance(final, float) else ""
        print(f"federated run written to {run_dir} ({len(history)} rounds, {seconds:.1f} s{shown})", file=sys.stderr)
        if dp is not None:
            print(f"client-level DP: epsilon {dp['epsilon']:.3g} at delta {dp['delta']:g} after {len(history)} "
                  f"rounds (RDP accountant, q = {dp['sample_rate']:.3g}, sigma {dp['noise_multiplier']:g})",
                  file=sys.stderr)
    return FederatedResult(run_dir, metrics, history)


def _history_csv(history: list[dict]) -> str:
    import csv
    import io

    columns = list(dict.fromkeys(k for row in history for k in row))
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=columns)
    writer.writeheader()
    writer.writerows(history)
    return buffer.getvalue()


# ---------------------------------------------------------------- simulation
def _in_process_proxy(fl):
    from flwr.server.client_proxy import ClientProxy

    class InProcessClientProxy(ClientProxy):
        """A Flower ClientProxy that calls the client's NumPyClient directly, in this process."""

        def __init__(self, cid: str, make):
            super().__init__(cid)
            self.make = make

        def get_properties(self, ins, timeout, group_id):
            return self.make().to_client().get_properties(ins)

        def get_parameters(self, ins, timeout, group_id):
            return self.make().to_client().get_parameters(ins)

        def fit(self, ins, timeout, group_id):
            return self.make().to_client().fit(ins)

        def evaluate(self, ins, timeout, group_id):
            return self.make().to_client().evaluate(ins)

        def reconnect(self, ins, timeout, group_id):
            return fl.common.DisconnectRes(reason="")

    return InProcessClientProxy


def simulate(recipe, *, out=None, overrides=None, overwrite: bool = False, progress: bool = True,
             crash: dict[int, int] | None = None, **fields) -> FederatedResult:
    """All clients in this process, one after another, through Flower's Server and Strategy (no Ray).

    `crash`: {client: round} makes that client raise in that round (a failing client, for tests)."""
    fl = flower()
    setup = load_setup(recipe, overrides, progress=progress, **fields)
    fed = setup.recipe.federated
    if fed.secure_aggregation:  # SecAgg+ exists in flwr 1.27 only under SuperLink/SuperNode: see secagg.py
        if crash:
            raise DlforgeError("fault injection is not available with secure aggregation", where="crash")
        from dlforge.federated.secagg import secure

        return secure(recipe, out=out, overrides=overrides, overwrite=overwrite, progress=progress, **fields)
    local = LocalTraining(setup.recipe, setup.prepared)
    proxy_class = _in_process_proxy(fl)
    manager = fl.server.SimpleClientManager()
    for i, rows in enumerate(setup.partition.clients):
        cid = i + 1
        manager.register(proxy_class(str(cid), lambda rows=rows, cid=cid: make_client(
            local, rows, cid, crash_at_round=(crash or {}).get(cid))))

    def run(strategy):
        server = fl.server.Server(client_manager=manager, strategy=strategy)
        server.set_max_workers(1)  # clients one after another: the CPU's threads go to each client's tensors
        server.fit(num_rounds=fed.rounds, timeout=None)

    return run_server(setup, run, out=out, overwrite=overwrite, progress=progress, mode="simulation",
                       sampled=fed.sampled(), available=fed.clients)


# ---------------------------------------------------------------- real processes over gRPC
def check_address_free(address: str) -> None:
    """A clear error (exit 2) when the server's address cannot be bound, before Flower tries."""
    host, _, port = address.rpartition(":")
    if not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise DlforgeError(f"'{address}' is not HOST:PORT", where="--address", hint="e.g. 127.0.0.1:9092")
    host = host.strip("[]")
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        try:
            sock.bind((host, int(port)))
        except OSError as exc:
            if exc.errno == errno.EADDRINUSE:
                raise DlforgeError(f"address {address} is already in use", where="--address",
                                   hint="stop the process listening there, or pick another port, e.g. "
                                        f"--address {host}:{int(port) + 1}") from None
            raise DlforgeError(f"cannot listen on {address}: {exc.strerror}", where="--address",
                               hint="use a local address such as 127.0.0.1:9092") from None


def _wait_for_server(address: str, *, seconds: float) -> None:
    """Poll until the server accepts connections (it may still be reading its data), or a clear error."""
    host, _, port = address.rpartition(":")
    deadline = time.monotonic() + seconds
    while True:
        try:
            with socket.create_connection((host.strip("[]"), int(port)), timeout=2):
                return
        except (OSError, ValueError):
            if time.monotonic() > deadline:
                raise DlforgeError(f"no federated server answered at {address} within {seconds:g} s",
                                   where="--server", hint="start `dlforge federate server RECIPE --address "
                                                          f"{address}` first (or raise federated.wait_clients)") from None
            time.sleep(0.5)


def _no_secure_aggregation(fed, mode: str) -> None:
    if fed.secure_aggregation:
        raise DlforgeError(f"`dlforge federate {mode}` runs Flower's legacy gRPC loop, which has no SecAgg+ in flwr 1.27",
                           where="federated.secure_aggregation",
                           hint="run `dlforge federate RECIPE --secure-aggregation` (a loopback SuperLink and one "
                                "SuperNode per client), or set secure_aggregation: false")


def serve(recipe, *, address: str = DEFAULT_ADDRESS, clients: int | None = None, rounds: int | None = None,
          fraction: float | None = None, out=None, overrides=None, overwrite: bool = False,
          progress: bool = True) -> FederatedResult:
    """`dlforge federate server`: wait for `clients` client processes, run the rounds over gRPC, write the run."""
    fl = flower()
    check_address_free(address)
    fields = {"clients": clients, "rounds": rounds, "fraction": fraction if fraction is not None else 1.0}
    setup = load_setup(recipe, overrides, progress=progress, split_clients=False, **fields)
    fed = setup.recipe.federated
    _no_secure_aggregation(fed, "server")
    if progress:
        print(f"federated server on {address}: waiting for {fed.clients} client(s) (up to {fed.wait_clients:g} s), "
              f"{fed.rounds} round(s), {fed.strategy}", file=sys.stderr)

    def run(strategy):
        try:
            fl.server.start_server(server_address=address, strategy=strategy,
                                   config=fl.server.ServerConfig(num_rounds=fed.rounds,
                                                                 round_timeout=fed.round_timeout))
        except RuntimeError as exc:  # grpc could not bind after all (a race with another process)
            if "bind" in str(exc).lower() or "port" in str(exc).lower():
                raise DlforgeError(f"address {address} is already in use", where="--address",
                                   hint="pick another port") from None
            raise

    # The first round waits for every client; later rounds go on with the clients still connected.
    return run_server(setup, run, out=out, overwrite=overwrite, progress=progress, mode="grpc",
                       sampled=fed.sampled(), available=0, wait_for=fed.clients)


def connect(recipe, *, server: str = DEFAULT_ADDRESS, slot: str = "1/1", overrides=None, progress: bool = True,
            crash_at_round: int | None = None, retries: int = 30) -> dict:
    """`dlforge federate client`: train partition K of N (`slot` 'K/N') for the server at `server`."""
    fl = flower()
    k, n = parse_client_slot(slot)
    setup = load_setup(recipe, overrides, progress=False, clients=n)
    _no_secure_aggregation(setup.recipe.federated, "client")
    rows = setup.partition.clients[k - 1]
    if progress:
        print(f"federated client {k}/{n}: {len(rows)} training rows, server {server}", file=sys.stderr)
    local = LocalTraining(setup.recipe, setup.prepared)
    client = make_client(local, rows, k, crash_at_round=crash_at_round)
    started = time.perf_counter()
    _wait_for_server(server, seconds=setup.recipe.federated.wait_clients)
    try:
        fl.client.start_client(server_address=server, client=client.to_client(), insecure=True,
                               max_retries=retries, max_wait_time=float(retries))
    except Exception as exc:  # noqa: BLE001 - grpc's connection errors have no common public base
        raise DlforgeError(f"the client lost the server at {server}: {exc.__class__.__name__}: {str(exc)[:200]}",
                           where="--server", hint="start `dlforge federate server` first, at that address") from None
    return {"client": k, "of": n, "rows": int(len(rows)), "seconds": round(time.perf_counter() - started, 3)}
