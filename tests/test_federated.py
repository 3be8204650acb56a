"""Federated learning with Flower (docs/federated.md): partitions, aggregation, FedProx, failures, gRPC processes."""

from __future__ import annotations

import csv
import os
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml

from dlforge.core.errors import DlforgeError, RecipeError
from dlforge.federated.partition import parse_client_slot, partition_rows

# ---------------------------------------------------------------- partitions (no Flower needed)


def _every_row_once(part, n):
    rows = np.concatenate(part.clients)
    assert len(rows) == n and np.array_equal(np.sort(rows), np.arange(n))


def test_iid_partition_equal_sizes_every_row_once():
    labels = np.repeat(np.arange(10), 30)
    part = partition_rows("iid", 7, labels=labels, seed=0)
    _every_row_once(part, 300)
    assert sorted(part.sizes().tolist()) == [42] + [43] * 6
    assert part.as_dict()["classes_per_client"]["max"] == 10


def test_shards_partition_gives_each_client_k_label_shards():
    labels = np.repeat(np.arange(10), 20)  # 200 rows: 20 shards of 10 rows, each of one class
    part = partition_rows("shards:2", 10, labels=labels, seed=1)
    _every_row_once(part, 200)
    assert part.sizes().tolist() == [20] * 10
    held = (part.classes > 0).sum(1)
    assert held.max() <= 2 and held.min() >= 1  # McMahan et al.'s pathological non-IID: at most 2 classes each
    assert any("lack at least one class" in line for line in part.summary())
    same_seed = partition_rows("shards:2", 10, labels=labels, seed=1)
    assert all(np.array_equal(a, b) for a, b in zip(part.clients, same_seed.clients))


def test_dirichlet_partition_skews_classes_and_refuses_empty_clients():
    labels = np.repeat(np.arange(4), 100)
    part = partition_rows("dirichlet:0.1", 5, labels=labels, seed=0)
    _every_row_once(part, 400)
    assert (part.classes > 0).sum(1).mean() < 4  # small alpha: clients miss classes
    near_iid = partition_rows("dirichlet:1000", 5, labels=labels, seed=0)
    assert (near_iid.classes > 0).all() and near_iid.sizes().min() > 60
    with pytest.raises(RecipeError, match=r"without data"):
        partition_rows("dirichlet:0.001", 300, labels=labels, seed=0)


def test_by_column_partition_one_client_per_value_and_names_empty_clients():
    column = np.array(["a", "b", "c", "a", "b", "a"] * 5)
    part = partition_rows("by:site", 3, column=column)
    _every_row_once(part, 30)
    assert sorted(part.sizes().tolist()) == [5, 10, 15]
    for rows in part.clients:
        assert len(set(column[rows])) == 1
    merged = partition_rows("by:site", 2, column=column)
    assert sorted(merged.sizes().tolist()) == [15, 15]
    with pytest.raises(RecipeError, match=r"3 distinct value\(s\).*leave 2 without data.*clients: 3"):
        partition_rows("by:site", 5, column=column)


def test_bad_partition_specs_and_slots_are_recipe_errors_with_suggestions():
    labels = np.zeros(10, dtype=np.int64)
    with pytest.raises(ValueError, match="did you mean 'shards'"):
        partition_rows("shard:2", 2, labels=labels)
    with pytest.raises(ValueError, match="whole number"):
        partition_rows("shards:x", 2, labels=labels)
    with pytest.raises(ValueError, match="number > 0"):
        partition_rows("dirichlet:-1", 2, labels=labels)
    with pytest.raises(RecipeError, match="more than there are rows"):
        partition_rows("shards:6", 2, labels=labels)
    with pytest.raises(RecipeError, match="at most 10 clients"):
        partition_rows("iid", 11, labels=labels)
    assert parse_client_slot("2/3") == (2, 3)
    with pytest.raises(DlforgeError, match="K/N"):
        parse_client_slot("4/3")


# ---------------------------------------------------------------- with Flower

@pytest.fixture
def fl():
    """Flower (the `federated` extra); the tests above run without it."""
    return pytest.importorskip("flwr")


def _data(tmp_path: Path, n: int = 240) -> Path:
    rng = np.random.default_rng(0)
    path = tmp_path / "rows.csv"
    with open(path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["x1", "x2", "x3", "site", "label"])
        for i in range(n):
            label = i % 3
            x = rng.normal(size=3) + 2.0 * np.eye(3)[label]
            writer.writerow([*np.round(x, 4), f"s{i % 4}", f"c{label}"])
    return path


def _recipe(tmp_path: Path, **federated) -> Path:
    recipe = {
        "name": "tiny-fed",
        "data": {"source": str(_data(tmp_path)), "split": {"val": 0.0, "test": 0.25, "seed": 0}},
        "inputs": [{"name": n, "type": "number"} for n in ("x1", "x2", "x3")],
        "outputs": [{"name": "label", "type": "category"}],
        "training": {"optimizer": {"name": "sgd", "lr": 0.1, "momentum": 0.0}, "schedule": {"name": "constant"},
                     "seed": 0, "threads": 1, "baseline": False},
        "federated": {"clients": 4, "fraction": 1.0, "rounds": 2, "partition": "iid", "local_epochs": 1,
                      "batch_size": 10, **federated},
    }
    path = tmp_path / "fed.yaml"
    path.write_text(yaml.safe_dump(recipe))
    return path


@pytest.fixture(autouse=True)
def _no_tracking(monkeypatch):
    monkeypatch.setenv("DLFORGE_TRACKING", "off")
    monkeypatch.setenv("FLWR_TELEMETRY_ENABLED", "0")


def _proxy(cid):
    from flwr.server.client_proxy import ClientProxy

    class Fake(ClientProxy):
        def get_properties(self, *a): ...
        def get_parameters(self, *a): ...
        def fit(self, *a): ...
        def evaluate(self, *a): ...
        def reconnect(self, *a): ...

    return Fake(cid)


def _fit_res(arrays, n):
    from flwr.common import Code, FitRes, Status, ndarrays_to_parameters

    return FitRes(status=Status(Code.OK, ""), parameters=ndarrays_to_parameters(arrays), num_examples=n,
                  metrics={"train_loss": 1.0})


def test_fedavg_aggregate_is_the_weighted_mean_of_client_weights(fl, tmp_path):
    from flwr.common import parameters_to_ndarrays

    from dlforge.federated.strategy import build_strategy, weighted_mean
    from dlforge.recipe.federated import FederatedConfig

    a = [np.array([1.0, 2.0], dtype=np.float32), np.array([[0.0]], dtype=np.float32)]
    b = [np.array([4.0, 8.0], dtype=np.float32), np.array([[4.0]], dtype=np.float32)]
    strategy = build_strategy(FederatedConfig(clients=2, fraction=1.0), initial=a, evaluate_fn=None, sampled=2,
                              available=2, in_process=True)
    params, metrics = strategy.aggregate_fit(1, [(_proxy("1"), _fit_res(a, 1)), (_proxy("2"), _fit_res(b, 3))], [])
    got = parameters_to_ndarrays(params)
    np.testing.assert_allclose(got[0], [3.25, 6.5])  # (1*[1,2] + 3*[4,8]) / 4, by hand
    np.testing.assert_allclose(got[1], [[3.0]])
    for mine, theirs in zip(weighted_mean([a, b], [1, 3]), got):
        np.testing.assert_allclose(mine, theirs, rtol=1e-6)
    assert metrics["train_loss"] == pytest.approx(1.0)


def test_fedprox_term_and_its_pull_towards_the_global_weights(fl, tmp_path):
    import torch

    from dlforge.federated.client import LocalTraining, Proximal, model_weights
    from dlforge.federated.run import load_setup

    model = torch.nn.Linear(2, 1)
    prox = Proximal(0.5)
    prox.set_anchor(model)
    with torch.no_grad():
        model.weight.add_(torch.tensor([[1.0, 2.0]]))
        model.bias.add_(3.0)
    assert float(prox.term(model).detach()) == pytest.approx(0.5 / 2 * (1 + 4 + 9))

    setup = load_setup(_recipe(tmp_path), progress=False)
    local = LocalTraining(setup.recipe, setup.prepared, work_dir=tmp_path / "work")
    rows = setup.partition.clients[0]
    start = [np.zeros_like(w) for w in model_weights(_global(setup, tmp_path))]
    free, n, loss = local.fit(rows, start, seed=1, mu=0.0)
    held, _, _ = local.fit(rows, start, seed=1, mu=5.0)  # lr * mu = 0.5: a stable pull
    drift = lambda ws: sum(float(np.sum(w.astype(np.float64) ** 2)) for w in ws)  # noqa: E731
    assert n == len(rows) and np.isfinite(loss)
    assert drift(held) < 0.5 * drift(free)  # mu pulls the local weights back to the global ones


def _global(setup, tmp_path):
    from dlforge.federated.run import GlobalModel

    return GlobalModel(setup, tmp_path / "g").trainer.model


def test_simulation_writes_a_run_directory_and_survives_a_failing_client(fl, tmp_path, capsys):
    import dlforge
    from dlforge.federated import simulate

    result = simulate(_recipe(tmp_path), out=tmp_path / "run", crash={2: 1}, progress=True)
    history = list(csv.DictReader(open(tmp_path / "run" / "history.csv")))
    assert [int(r["round"]) for r in history] == [1, 2]
    assert (history[0]["clients_sampled"], history[0]["clients_ok"], history[0]["failures"]) == ("4", "3", "1")
    assert history[1]["failures"] == "0" and float(history[1]["test.accuracy"]) > 0.5
    assert "1 client(s) failed" in capsys.readouterr().err
    assert result.metrics["federated"]["failures"] == 1
    assert "client 2 failed in round 1" in result.metrics["federated"]["failed_clients"][0]
    predictor = dlforge.load(tmp_path / "run")
    assert predictor.predict({"x1": [3.0], "x2": [0.0], "x3": [0.0]})[0] in ("c0", "c1", "c2")
    from dlforge.workflows.evaluate import evaluate

    assert evaluate(tmp_path / "run")["accuracy"] == pytest.approx(result.metrics["test"]["accuracy"])


def test_fedadam_and_client_dp_report_the_accountants_epsilon(fl, tmp_path):
    pytest.importorskip("opacus")
    from dlforge.federated import simulate
    from dlforge.training.privacy import epsilon_spent

    recipe = _recipe(tmp_path, strategy="fedadam", server_lr=0.05, rounds=2, fraction=0.5,
                     client_dp={"noise_multiplier": 1.1, "clipping_norm": 5.0, "delta": 1e-3})
    result = simulate(recipe, out=tmp_path / "run", progress=False)
    dp = result.metrics["federated"]["client_dp"]
    assert dp["sample_rate"] == 0.5 and dp["rounds"] == 2
    assert dp["epsilon"] == pytest.approx(epsilon_spent(1.1, 0.5, 2, 1e-3, "rdp"))
    assert float(result.history[-1]["client_dp.epsilon"]) == pytest.approx(dp["epsilon"])


def _cli(*args, cwd=None):
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parent.parent / "src"), "OMP_NUM_THREADS": "1"}
    return [sys.executable, "-m", "dlforge.cli", "federate", *args], env


def test_bad_input_exits_2_with_the_field(fl, tmp_path, capsys):
    from dlforge.cli.app import main

    recipe = _recipe(tmp_path)
    for args, expected in ((["--partition", "dirichlet:0"], "federated.partition"),
                           (["--fraction", "1.5"], "federated.fraction"),
                           (["--clients", "0"], "federated.clients"),
                           (["--partition", "by:region"], "no column 'region'"),
                           (["--partition", "by:site", "--clients", "6"], "4 distinct value(s)"),
                           (["--partition", "shards:50"], "more than there are rows"),
                           (["--address", "127.0.0.1:1"], "--address does not apply"),
                           (["--set", "training.optimizer.lr=auto"], "training.optimizer.lr")):
        _refused(main, ["federate", str(recipe), "--out", str(tmp_path / "x"), *args], expected, capsys)
    with pytest.raises(SystemExit) as exit_info:
        main(["federate", "servr", str(recipe)])
    assert exit_info.value.code == 2 and "did you mean 'server'" in capsys.readouterr().err
    assert not (tmp_path / "x").exists()  # refused before any file was written


def test_server_address_in_use_exits_2(fl, tmp_path, capsys):
    from dlforge.cli.app import main

    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen(1)
        port = busy.getsockname()[1]
        with pytest.raises(SystemExit) as exit_info:
            main(["federate", "server", str(_recipe(tmp_path)), "--address", f"127.0.0.1:{port}"])
    assert exit_info.value.code == 2
    assert f"address 127.0.0.1:{port} is already in use" in capsys.readouterr().err


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_one_server_and_three_client_processes_over_grpc_with_a_crash(fl, tmp_path):
    recipe = _recipe(tmp_path, rounds=3)
    address = f"127.0.0.1:{_free_port()}"
    cmd, env = _cli("server", str(recipe), "--address", address, "--clients", "3", "--out", str(tmp_path / "fed"))
    server = subprocess.Popen(cmd, env=env, stderr=subprocess.PIPE, text=True)
    clients = []
    for k in (1, 2, 3):
        extra = ["--crash-at-round", "2"] if k == 3 else []
        cmd, env = _cli("client", str(recipe), "--server", address, "--partition", f"{k}/3", *extra)
        clients.append(subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
    codes = [c.wait(timeout=600) for c in clients]
    _, server_err = server.communicate(timeout=600)
    assert server.returncode == 0, server_err[-2000:]
    assert codes[:2] == [0, 0] and codes[2] == 3  # client 3 died mid-round 2
    history = list(csv.DictReader(open(tmp_path / "fed" / "history.csv")))
    assert [(r["round"], r["clients_ok"], r["failures"]) for r in history] == [("1", "3", "0"), ("2", "2", "1"),
                                                                             ("3", "2", "0")]
    assert "a client disconnected mid-round" in server_err
    for name in ("model.safetensors", "model.json", "recipe.yaml", "run.json", "metrics.json", "report.html"):
        assert (tmp_path / "fed" / name).is_file()
    assert float(history[-1]["test.accuracy"]) > 0.5


def test_a_recipe_without_a_federated_section_federates_with_the_defaults(tmp_path):
    from dlforge.federated.run import load_setup

    recipe = yaml.safe_load(_recipe(tmp_path).read_text())
    del recipe["federated"]
    path = tmp_path / "plain.yaml"
    path.write_text(yaml.safe_dump(recipe))
    setup = load_setup(path, ["federated.rounds=3", "training.seed=2"], progress=False, clients=5, partition="iid")
    fed = setup.recipe.federated
    assert (fed.clients, fed.rounds, fed.partition, fed.strategy) == (5, 3, "iid", "fedavg")
    assert setup.recipe.training.seed == 2 and len(setup.partition.clients) == 5


# ---------------------------------------------------------------- speed: channels-last layout for conv models
def test_fast_layout_keeps_the_parameters_the_weights_and_the_training_step():
    import torch

    from dlforge.federated.client import fast_layout, load_weights, model_weights

    torch.manual_seed(0)

    def net():
        return torch.nn.Sequential(torch.nn.Conv2d(1, 4, 3, padding=1), torch.nn.ReLU(), torch.nn.MaxPool2d(2),
                                   torch.nn.Flatten(), torch.nn.Linear(4 * 4 * 4, 3))

    plain = net()
    fast = net()
    fast.load_state_dict(plain.state_dict())
    params = list(fast.parameters())
    optimizer = torch.optim.SGD(fast.parameters(), lr=0.1)  # built before the layout change, as the trainer's is
    assert fast_layout(fast) is fast and list(fast.parameters()) == params  # same Parameter objects
    assert fast[0].weight.is_contiguous(memory_format=torch.channels_last)
    sent = model_weights(fast)
    assert all(a.flags["C_CONTIGUOUS"] for a in sent)
    assert all(np.array_equal(a, b) for a, b in zip(sent, model_weights(plain)))
    x, y = torch.rand(6, 1, 8, 8), torch.tensor([0, 1, 2, 0, 1, 2])
    plain_opt = torch.optim.SGD(plain.parameters(), lr=0.1)
    for model, opt in ((plain, plain_opt), (fast, optimizer)):
        for _ in range(3):
            loss = torch.nn.functional.cross_entropy(model(x), y)
            opt.zero_grad()
            loss.backward()
            opt.step()
    for a, b in zip(model_weights(fast), model_weights(plain)):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
    load_weights(fast, [w * 0 + 1 for w in sent])  # received weights go into the channels-last tensors
    assert fast[0].weight.is_contiguous(memory_format=torch.channels_last)
    assert float(fast[0].weight.detach().sum()) == fast[0].weight.numel()
    mlp = torch.nn.Sequential(torch.nn.Linear(3, 2))
    fast_layout(mlp)  # no convolution: untouched
    assert mlp[0].weight.is_contiguous()


# ---------------------------------------------------------------- secure aggregation (SecAgg+, SuperLink/SuperNode)
def test_secure_aggregation_bad_input_is_refused_before_any_process(fl, tmp_path, capsys):
    from dlforge.cli.app import main
    from dlforge.federated.secagg import secure, shares

    assert shares(3) == (3, 2) and shares(10) == (10, 7)
    recipe = _recipe(tmp_path)
    with pytest.raises(DlforgeError, match="one SuperNode process per client"):
        secure(recipe, out=tmp_path / "x", clients=17)
    with pytest.raises(DlforgeError, match="at least 3 clients"):
        secure(recipe, out=tmp_path / "x", clients=2)
    dp = _recipe(tmp_path, client_dp={"noise_multiplier": 1.1, "clipping_norm": 5.0, "delta": 1e-3})
    with pytest.raises(DlforgeError, match="client_dp clips each client's update"):
        secure(dp, out=tmp_path / "x")
    recipe = _recipe(tmp_path)
    assert not (tmp_path / "x").exists()
    for args in (["server", str(recipe), "--secure-aggregation"],
                 ["client", str(recipe), "--secure-aggregation"]):
        with pytest.raises(SystemExit) as exit_info:
            main(["federate", *args])
        assert exit_info.value.code == 2
        assert "--secure-aggregation does not apply" in capsys.readouterr().err
    secure_recipe = _recipe(tmp_path, secure_aggregation=True)
    with pytest.raises(SystemExit) as exit_info:
        main(["federate", "server", str(secure_recipe), "--address", f"127.0.0.1:{_free_port()}"])
    assert exit_info.value.code == 2
    assert "no SecAgg+" in capsys.readouterr().err


@pytest.mark.slow
@pytest.mark.timeout(1800)  # ~10 flwr-clientapp process starts a round (one per SecAgg+ stage and client)
def test_secure_aggregation_over_superlink_and_three_supernodes_equals_plain_fedavg(fl, tmp_path, capsys):
    """SecAgg+ for real: flower-superlink + 3 flower-supernode processes on loopback, `flwr run` of the App; the
    unmasked aggregate equals plain FedAvg of the same clients' updates up to SecAgg+'s quantisation."""
    from safetensors.numpy import load_file

    from dlforge.cli.app import main
    from dlforge.federated import simulate

    recipe = _recipe(tmp_path, clients=3, rounds=2)
    plain = simulate(recipe, out=tmp_path / "plain", progress=False)
    try:
        main(["federate", str(recipe), "--secure-aggregation", "--out", str(tmp_path / "secure")])
    except SystemExit as exit_info:
        assert exit_info.code in (0, None), capsys.readouterr().err[-3000:]
    err = capsys.readouterr().err
    assert "SecAgg+" in err and "3 SuperNode(s)" in err
    metrics = yaml.safe_load((tmp_path / "secure" / "metrics.json").read_text())
    block = metrics["federated"]["secure_aggregation"]
    assert (block["num_shares"], block["reconstruction_threshold"]) == (3, 2)
    assert metrics["federated"]["mode"].startswith("secagg+")
    history = list(csv.DictReader(open(tmp_path / "secure" / "history.csv")))
    assert [(r["round"], r["clients_ok"], r["failures"]) for r in history] == [("1", "3", "0"), ("2", "3", "0")]
    secure_w = load_file(str(tmp_path / "secure" / "model.safetensors"))
    plain_w = load_file(str(tmp_path / "plain" / "model.safetensors"))
    assert secure_w.keys() == plain_w.keys()
    for name in plain_w:
        np.testing.assert_allclose(secure_w[name], plain_w[name], atol=1e-3)
    assert float(history[-1]["test.accuracy"]) == pytest.approx(plain.metrics["test"]["accuracy"], abs=0.02)


@pytest.mark.slow  # 30-52 s wall at load 12-15 (three tiny simulations)
def test_target_accuracy_stops_at_the_first_round_reaching_it_with_the_same_history(fl, tmp_path, capsys):
    from dlforge.cli.app import main
    from dlforge.federated import simulate

    recipe = _recipe(tmp_path, rounds=3, fraction=0.5)
    full = simulate(recipe, out=tmp_path / "full", progress=False)
    accuracy = [r["test.accuracy"] for r in full.history]
    assert len(accuracy) == 3 and full.metrics["federated"].get("target") is None
    target = max(accuracy[:2])
    first = next(i + 1 for i, a in enumerate(accuracy) if a >= target)  # at most 2: the run stops early
    main(["federate", str(recipe), "--target-accuracy", str(target), "--out", str(tmp_path / "stop")])
    out = capsys.readouterr()
    assert f"target test accuracy {target:g} reached in round {first}" in out.out
    assert f"reached in round {first}: stopping" in out.err
    history = list(csv.DictReader(open(tmp_path / "stop" / "history.csv")))
    assert [int(r["round"]) for r in history] == list(range(1, first + 1))
    assert [float(r["test.accuracy"]) for r in history] == pytest.approx(accuracy[:first], abs=1e-6)
    metrics = yaml.safe_load((tmp_path / "stop" / "metrics.json").read_text())
    assert metrics["federated"]["target"] == {"accuracy": target, "split": "test", "reached_round": first,
                                              "max_rounds": 3}
    assert metrics["stopped_early"] is True and metrics["epochs_run"] == first
    assert metrics["federated"]["rounds_to_test_accuracy"]["0.97"] is None  # the 97/98/99% table is still there
    # the saved model is the one of the round that reached the target
    assert metrics["test"]["accuracy"] == pytest.approx(accuracy[first - 1], abs=1e-6)


def test_recorder_after_the_target_trains_and_evaluates_nothing_more():
    from types import SimpleNamespace

    from dlforge.federated.strategy import Recorder

    calls = []

    class Inner:  # a scripted strategy: accuracy 0.5, 0.8, 0.9, ... by round
        def configure_fit(self, server_round, parameters, client_manager):
            calls.append(("fit", server_round))
            return ["instruction"]

        def evaluate(self, server_round, parameters):
            calls.append(("evaluate", server_round))
            return 0.1, {"test.accuracy": [0.0, 0.5, 0.8, 0.9, 0.95][server_round]}

    fed = SimpleNamespace(target_accuracy=0.8, rounds=4, client_dp=None)
    recorder = Recorder(Inner(), fed, eval_name="test", progress=False)
    assert recorder.evaluate(0, None) is None  # the initial weights: not evaluated, not recorded
    for server_round in (1, 2, 3, 4):
        recorder.configure_fit(server_round, None, None)
        recorder.evaluate(server_round, None)
    assert recorder.reached == 2 and [r["round"] for r in recorder.rows] == [1, 2]
    assert calls == [("fit", 1), ("evaluate", 1), ("fit", 2), ("evaluate", 2)]
    assert recorder.configure_fit(5, None, None) == []
    never = Recorder(Inner(), SimpleNamespace(target_accuracy=0.99, rounds=4, client_dp=None), eval_name="test",
                     progress=False)
    for server_round in (1, 2, 3, 4):
        never.configure_fit(server_round, None, None)
        never.evaluate(server_round, None)
    assert never.reached is None and len(never.rows) == 4


def test_target_accuracy_bad_input_exits_2(fl, tmp_path, capsys):
    from dlforge.cli.app import main

    recipe = _recipe(tmp_path)
    for args, expected in ((["--target-accuracy", "1.5"], "federated.target_accuracy"),
                           (["--target-accuracy", "0"], "federated.target_accuracy"),
                           (["--target-accuracy", "0.9", "--set", "outputs.0.type=number"],
                            "needs a category or binary output")):
        _refused(main, ["federate", str(recipe), "--out", str(tmp_path / "x"), *args], expected, capsys)
    with pytest.raises(SystemExit) as exit_info:
        main(["federate", "client", str(recipe), "--target-accuracy", "0.9"])
    assert exit_info.value.code == 2 and "--target-accuracy does not apply" in capsys.readouterr().err
    assert not (tmp_path / "x").exists()


def _refused(main, argv: list[str], expected: str, capsys) -> None:
    """The CLI exits 2 with `expected` in its message and no traceback."""
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    assert exit_info.value.code == 2, argv
    err = capsys.readouterr().err
    assert expected in err and "Traceback" not in err, (argv, err)


@pytest.mark.slow  # one tiny simulation: ~20 s wall at load 3
def test_evaluate_val_scores_only_the_validation_rows_each_round_and_never_test(fl, tmp_path):
    from dlforge.federated import simulate

    recipe = _recipe(tmp_path, rounds=2, evaluate="val", target_accuracy=1.0)
    result = simulate(recipe, out=tmp_path / "run", overrides=["data.split.val=0.2"], progress=False)
    history = list(csv.DictReader(open(tmp_path / "run" / "history.csv")))
    assert [int(r["round"]) for r in history] == [1, 2]
    assert all(0.0 <= float(r["val.accuracy"]) <= 1.0 for r in history)
    assert not [k for k in history[0] if k.startswith("test.")]  # the held-out test rows: never scored
    metrics = result.metrics
    assert "test" not in metrics and metrics["federated"]["evaluated_on"] == "val"
    assert metrics["data"]["rows"] == {"train": 144, "val": 36, "test": 60}  # val: a fifth of the 180 training rows
    assert metrics["federated"]["partition"]["rows"] == 144  # the clients share only the training rows
    assert metrics["federated"]["target"]["split"] == "val"
    assert metrics["val"]["accuracy"] == pytest.approx(float(history[-1]["val.accuracy"]), abs=1e-6)


def test_evaluate_val_without_a_validation_split_exits_2_before_any_file(fl, tmp_path, capsys):
    from dlforge.cli.app import main

    recipe = _recipe(tmp_path, evaluate="val")
    _refused(main, ["federate", str(recipe), "--out", str(tmp_path / "x")], "data.split.val", capsys)
    _refused(main, ["federate", str(recipe), "--set", "federated.evaluate=tst", "--out", str(tmp_path / "x")],
             "federated.evaluate", capsys)
    assert not (tmp_path / "x").exists()
