"""Secure aggregation (Flower's SecAgg+) over a real SuperLink and SuperNodes on loopback, without Ray.

In flwr 1.27 SecAgg+ exists only as a ServerApp workflow (`SecAggPlusWorkflow`) paired with a ClientApp mod
(`secaggplus_mod`), run by Flower's deployment engine. `secure` therefore:

  1. writes a two-file Flower App (pyproject.toml + a package whose ServerApp and ClientApp are built below from
     the same strategy, Recorder, LocalTraining and NumPyClient as every other mode) and a private FLWR_HOME
     whose config.toml names a loopback SuperLink connection;
  2. starts `flower-superlink --insecure` (ServerAppIo, Fleet and Control APIs on free loopback ports; the
     ServerApp runs in its subprocess isolation) and one `flower-supernode --insecure` per client, with
     `--node-config "partition-id=K num-partitions=N"`;
  3. submits the App with `flwr run APP local --stream`, and stops every process it started afterwards.

Each client masks its weighted, quantised update with pairwise masks (Diffie-Hellman agreed) and a self mask,
secret-shared among the others (Bell et al. 2020); the server unmasks only the sum. The ServerApp writes the
same run directory as `simulate`/`serve` (metrics.json's federated block says `secure_aggregation`). What the
server never sees is each client's update: FedAvg's aggregate is recovered from the masked sum (quantisation
error ~1e-5 relative); the strategy still gets one result per client, each holding the aggregate.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from dlforge.core.errors import DlforgeError

MAX_SECURE_CLIENTS = 16  # one SuperNode process (and one ClientApp process) per client on this machine
APP_PACKAGE = "dlforge_secagg_app"


def shares(clients: int) -> tuple[int, int]:
    """SecAgg+'s (num_shares, reconstruction_threshold): every client shares with all others, and any 2/3 of
    them (at least 2) can reconstruct a dropped client's mask, so up to a third may drop out of a round."""
    return clients, max(2, math.ceil(2 * clients / 3))


# ---------------------------------------------------------------- the two apps (imported by the generated package)
def build_server_app():
    from flwr.server import LegacyContext, ServerApp, ServerConfig
    from flwr.server.workflow import DefaultWorkflow, SecAggPlusWorkflow

    from dlforge.federated.run import run_server, load_setup

    app = ServerApp()

    @app.main()
    def main(grid, context):
        cfg = context.run_config
        setup = load_setup(cfg["recipe"], json.loads(cfg["overrides"]), progress=True, split_clients=False)
        fed = setup.recipe.federated
        num_shares, threshold = shares(fed.clients)
        # The weight (rows) of each client's update is quantised against max_weight: the training rows bound it.
        max_weight = float(len(setup.prepared.splits["train"]))

        def run(strategy):
            legacy = LegacyContext(context=context, strategy=strategy,
                                   config=ServerConfig(num_rounds=fed.rounds, round_timeout=fed.round_timeout))
            workflow = SecAggPlusWorkflow(num_shares=num_shares, reconstruction_threshold=threshold,
                                          max_weight=max_weight, clipping_range=float(cfg["clipping_range"]),
                                          timeout=fed.round_timeout)
            DefaultWorkflow(fit_workflow=workflow)(grid, legacy)

        run_server(setup, run, out=cfg["out"], overwrite=bool(cfg["overwrite"]), progress=True,
                    mode="secagg+ (SuperLink/SuperNode)", sampled=fed.sampled(), available=fed.clients,
                    extra={"secure_aggregation": {"protocol": "SecAgg+ (Bell et al. 2020), Flower SecAggPlusWorkflow",
                                                  "num_shares": num_shares, "reconstruction_threshold": threshold,
                                                  "clipping_range": float(cfg["clipping_range"]),
                                                  "max_weight": max_weight}})

    return app


_CLIENT_CACHE: dict = {}


def build_client_app():
    from flwr.client import ClientApp
    from flwr.client.mod import secaggplus_mod

    from dlforge.federated.client import LocalTraining, make_client
    from dlforge.federated.run import load_setup

    def client_fn(context):
        cfg, node = context.run_config, context.node_config
        k, n = int(node["partition-id"]) + 1, int(node["num-partitions"])
        key = (cfg["recipe"], cfg["overrides"], n)
        if key not in _CLIENT_CACHE:  # the data and fitted preprocessing, once per ClientApp process
            setup = load_setup(cfg["recipe"], json.loads(cfg["overrides"]), progress=False, clients=n)
            _CLIENT_CACHE[key] = (setup, LocalTraining(setup.recipe, setup.prepared))
        setup, local = _CLIENT_CACHE[key]
        return make_client(local, setup.partition.clients[k - 1], k).to_client()

    return ClientApp(client_fn=client_fn, mods=[secaggplus_mod])


# ---------------------------------------------------------------- the orchestration
def _free_ports(n: int) -> list[int]:
    socks = []
    try:
        for _ in range(n):
            s = socket.socket()
            s.bind(("127.0.0.1", 0))
            socks.append(s)
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def _wait_port(port: int, seconds: float, proc: subprocess.Popen, what: str, log: Path) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise DlforgeError(f"{what} exited with code {proc.returncode} before listening",
                               where="--secure-aggregation", hint=f"its log: {_tail(log)}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1):
                return
        except OSError:
            time.sleep(0.3)
    raise DlforgeError(f"{what} did not listen on 127.0.0.1:{port} within {seconds:g} s",
                       where="--secure-aggregation", hint=f"its log: {_tail(log)}")


def _tail(path: Path, chars: int = 600) -> str:
    try:
        return path.read_text(encoding="utf-8", errors="replace")[-chars:].strip() or "(empty)"
    except OSError:
        return "(none)"


def _stop(procs: list[subprocess.Popen]) -> None:
    for p in procs:
        if p.poll() is None:
            p.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + 10
    for p in procs:
        try:
            p.wait(timeout=max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()


def _tool(name: str) -> str:
    path = Path(sys.executable).parent / name
    found = str(path) if path.is_file() else shutil.which(name)
    if not found:
        raise DlforgeError(f"Flower's `{name}` command is not installed", where="--secure-aggregation",
                           hint="pip install 'dlforge[federated]' (flwr 1.27)")
    return found


def write_app(app_dir: Path, config: dict) -> None:
    """The Flower App `flwr run` packages: its pyproject.toml (components, run config) and a two-module package."""
    import tomli_w

    package = app_dir / APP_PACKAGE
    package.mkdir(parents=True, exist_ok=True)
    (package / "__init__.py").write_text("", encoding="utf-8")
    (package / "server_app.py").write_text(
        "from dlforge.federated.secagg import build_server_app\n\napp = build_server_app()\n", encoding="utf-8")
    (package / "client_app.py").write_text(
        "from dlforge.federated.secagg import build_client_app\n\napp = build_client_app()\n", encoding="utf-8")
    pyproject = {
        "build-system": {"requires": ["hatchling"], "build-backend": "hatchling.build"},
        "project": {"name": "dlforge-secagg-app", "version": "1.0.0", "description": "dlforge federate, SecAgg+",
                    "license": "Apache-2.0", "dependencies": []},
        "tool": {"hatch": {"build": {"targets": {"wheel": {"packages": ["."]}}}},
                 "flwr": {"app": {"publisher": "dlforge",
                                  "components": {"serverapp": f"{APP_PACKAGE}.server_app:app",
                                                 "clientapp": f"{APP_PACKAGE}.client_app:app"},
                                  "config": config}}},
    }
    (app_dir / "pyproject.toml").write_text(tomli_w.dumps(pyproject), encoding="utf-8")


def secure(recipe, *, out=None, overrides=None, overwrite: bool = False, progress: bool = True,
           clipping_range: float = 8.0, timeout: float = 3600.0, **fields):
    """`dlforge federate RECIPE --secure-aggregation`: SecAgg+ rounds over a loopback SuperLink and one SuperNode
    per client. Returns the FederatedResult of the run directory the ServerApp wrote."""
    from dlforge.federated.run import FederatedResult, federated_run_dir, field_overrides
    from dlforge.federated.strategy import flower
    from dlforge.recipe.federated import FederatedConfig
    from dlforge.recipe.io import load_recipe

    flower()
    if not isinstance(recipe, (str, Path)):
        raise DlforgeError("secure aggregation runs the recipe in other processes: pass the recipe's path",
                           where="dlforge federate --secure-aggregation", hint="save the recipe as YAML first")
    recipe_path = str(Path(recipe).resolve())
    own = [o for o in (overrides or []) if o.startswith("federated.")]
    others = [o for o in (overrides or []) if o not in own]
    all_overrides = [*others, *field_overrides(own, **fields), "federated.secure_aggregation=false"]
    checked = load_recipe(recipe_path, others)
    if checked.federated is None:  # as load_setup: a recipe without the section federates with the defaults
        checked.federated = FederatedConfig()
    checked = load_recipe(checked, all_overrides[len(others):])
    fed = checked.federated
    clients = fed.clients
    if clients > MAX_SECURE_CLIENTS:
        raise DlforgeError(f"secure aggregation starts one SuperNode process per client; {clients} clients is more "
                           f"than the {MAX_SECURE_CLIENTS} this runs on one machine", where="federated.clients",
                           hint=f"use --clients {MAX_SECURE_CLIENTS} or fewer, or run SuperNodes on the clients' own "
                                "machines (docs/federated.md)")
    if clients < 3:
        raise DlforgeError(f"SecAgg+ needs at least 3 clients (got {clients}): with 2, each learns the other's update "
                           "from the sum", where="federated.clients", hint="use --clients 3 or more")
    if fed.client_dp is not None:
        raise DlforgeError("client_dp clips each client's update on the server, which secure aggregation hides",
                           where="federated.client_dp", hint="use one of client_dp or --secure-aggregation")
    run_dir = federated_run_dir(checked, out, overwrite)  # refuse an existing --out here, before any process starts
    overwrite = overwrite or run_dir.exists()
    work = Path(tempfile.mkdtemp(prefix="dlforge-secagg-"))
    home, app_dir, logs = work / "flwr-home", work / "app", work / "logs"
    for d in (home, app_dir, logs):
        d.mkdir(parents=True)
    appio, fleet, control, health, *nodes = _free_ports(4 + clients)
    (home / "config.toml").write_text(
        f'[superlink]\ndefault = "local"\n\n[superlink.local]\naddress = "127.0.0.1:{control}"\ninsecure = true\n',
        encoding="utf-8")
    write_app(app_dir, {"recipe": recipe_path, "overrides": json.dumps(all_overrides),
                        "out": str(Path(run_dir).resolve()), "overwrite": bool(overwrite),
                        "clipping_range": float(clipping_range)})
    import dlforge

    src = str(Path(dlforge.__file__).resolve().parents[1])
    env = {**os.environ, "FLWR_HOME": str(home), "FLWR_TELEMETRY_ENABLED": "0",
           "PYTHONPATH": os.pathsep.join([src, *filter(None, [os.environ.get("PYTHONPATH")])]),
           "PATH": os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")])}
    procs: list[subprocess.Popen] = []

    def start(cmd, name):
        log = logs / f"{name}.log"
        with open(log, "wb") as f:
            procs.append(subprocess.Popen(cmd, stdout=f, stderr=subprocess.STDOUT, env=env, cwd=work,
                                          start_new_session=False))
        return procs[-1], log

    if progress:
        print(f"secure aggregation (SecAgg+): SuperLink on 127.0.0.1:{fleet}, {clients} SuperNode(s), "
              f"{shares(clients)[1]} of {clients} needed to unmask; logs in {logs}", file=sys.stderr)
    try:
        link, link_log = start([_tool("flower-superlink"), "--insecure", "--isolation", "subprocess",
                                "--serverappio-api-address", f"127.0.0.1:{appio}",
                                "--fleet-api-address", f"127.0.0.1:{fleet}",
                                "--control-api-address", f"127.0.0.1:{control}",
                                "--health-server-address", f"127.0.0.1:{health}",
                                "--storage-dir", str(work / "ffs")], "superlink")
        _wait_port(control, 120, link, "flower-superlink", link_log)
        _wait_port(fleet, 60, link, "flower-superlink", link_log)
        for k, port in enumerate(nodes):
            start([_tool("flower-supernode"), "--insecure", "--superlink", f"127.0.0.1:{fleet}",
                   "--clientappio-api-address", f"127.0.0.1:{port}",
                   "--node-config", f"partition-id={k} num-partitions={clients}"], f"supernode-{k + 1}")
        run_log = logs / "run.log"
        with open(run_log, "wb") as f:
            submitted = subprocess.Popen([_tool("flwr"), "run", str(app_dir), "local", "--stream"], stdout=f,
                                         stderr=subprocess.STDOUT, env=env, cwd=work)
            try:
                submitted.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                submitted.kill()
                submitted.wait()
                raise DlforgeError(f"the secure-aggregation run did not finish within {timeout:g} s",
                                   where="--secure-aggregation", hint=f"logs in {logs}") from None
    finally:
        _stop(procs)
    meta = Path(run_dir) / "checkpoint" / "meta.json"
    if not meta.is_file() or not json.loads(meta.read_text(encoding="utf-8")).get("complete"):
        raise DlforgeError("the secure-aggregation run wrote no complete run directory", where="--secure-aggregation",
                           hint=f"the ServerApp's output: {_tail(run_log, 1500)} (all logs in {logs})")
    if progress:
        lines = [ln for ln in run_log.read_text(encoding="utf-8", errors="replace").splitlines()
                 if ln.startswith(("round ", "federated run written"))]
        for line in lines:
            print(line, file=sys.stderr)
    metrics = json.loads((Path(run_dir) / "metrics.json").read_text(encoding="utf-8"))
    import csv

    with open(Path(run_dir) / "history.csv", encoding="utf-8") as f:
        history = [{k: _number(v) for k, v in row.items()} for row in csv.DictReader(f)]
    shutil.rmtree(work, ignore_errors=True)
    return FederatedResult(Path(run_dir), metrics, history)


def _number(value: str):
    try:
        return float(value)
    except (TypeError, ValueError):
        return value
