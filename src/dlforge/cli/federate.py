"""`dlforge federate`: federated training with Flower (docs/federated.md).

    dlforge federate RECIPE [--clients 100 --fraction 0.1 --rounds 50 --partition shards:2]   # one machine
    dlforge federate server RECIPE --address 127.0.0.1:9092 --clients 3 --rounds 5 --out runs/fed
    dlforge federate client RECIPE --server 127.0.0.1:9092 --partition 1/3
    dlforge federate RECIPE --clients 5 --fraction 1 --secure-aggregation                      # SecAgg+
"""

from __future__ import annotations

from pathlib import Path
from typing import List, Optional

import typer

from dlforge.core.errors import DlforgeError

commands = typer.Typer()

MODES = ("server", "client")


def _refuse(mode: str, **given) -> None:
    wrong = [name for name, value in given.items() if value not in (None, False, [])]
    if wrong:
        raise DlforgeError(f"{', '.join('--' + w.replace('_', '-') for w in wrong)} does not apply to "
                           f"`dlforge federate{' ' + mode if mode != 'simulation' else ''}`",
                           where="dlforge federate", hint="see `dlforge federate --help`")


@commands.command("federate")
def federate(
    args: List[str] = typer.Argument(..., metavar="[server|client] RECIPE",
                                     help="RECIPE: simulate every client here; `server RECIPE` / `client RECIPE`: "
                                          "one process of a gRPC run."),
    clients: Optional[int] = typer.Option(None, "--clients", help="Number of clients (federated.clients); for "
                                          "server: how many client processes to wait for."),
    fraction: Optional[float] = typer.Option(None, "--fraction", help="Share of clients trained each round "
                                             "(federated.fraction; server default: all connected clients)."),
    rounds: Optional[int] = typer.Option(None, "--rounds", help="Communication rounds (federated.rounds)."),
    target_accuracy: Optional[float] = typer.Option(None, "--target-accuracy", help="Stop after the first round "
                                                    "whose global test (else validation) accuracy reaches this, e.g. "
                                                    "0.99 (federated.target_accuracy); --rounds is then the most run."),
    partition: Optional[str] = typer.Option(None, "--partition", help="Simulation: iid | shards:K | dirichlet:ALPHA "
                                            "| by:COLUMN. client: this process's slot K/N, e.g. 1/3."),
    strategy: Optional[str] = typer.Option(None, "--strategy", help="fedavg | fedprox | fedadam."),
    address: Optional[str] = typer.Option(None, "--address", help="server: HOST:PORT to listen on "
                                          "(default 127.0.0.1:9092, loopback only)."),
    server: Optional[str] = typer.Option(None, "--server", help="client: the server's HOST:PORT "
                                         "(default 127.0.0.1:9092)."),
    out: Optional[Path] = typer.Option(None, "--out", help="Run directory of the global model "
                                       "(default runs/<name>-federated)."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace an existing run directory."),
    set_: List[str] = typer.Option([], "--set", help="Override a recipe field, e.g. --set federated.local_epochs=5."),
    secure_aggregation: bool = typer.Option(False, "--secure-aggregation", help="Flower's SecAgg+: a loopback "
                                            "SuperLink and one SuperNode process per client (3-16 clients); the "
                                            "server sees only the sum of the masked updates."),
    crash_at_round: Optional[int] = typer.Option(None, "--crash-at-round", hidden=True,
                                                 help="client: exit mid-round N (fault injection for tests)."),
):
    """Train a recipe across clients with Flower: FedAvg, FedProx or FedAdam over iid or non-IID partitions.
    The global model is a normal run directory (evaluate, predict, serve and dlforge.load take it); history.csv
    holds one row per round (global accuracy and loss, clients trained, failures)."""
    from dlforge import federated

    mode = args[0] if args[0] in MODES else "simulation"
    rest = args[1:] if mode != "simulation" else args
    if len(rest) != 1:
        from dlforge.core.errors import did_you_mean

        guess = did_you_mean(args[0], MODES) if mode == "simulation" and len(args) == 2 else ""
        raise DlforgeError(f"expected one RECIPE, got {len(rest)} argument(s): {' '.join(rest) or 'none'}{guess}",
                           where="dlforge federate", hint="dlforge federate [server|client] RECIPE [options]")
    recipe = rest[0]
    if not Path(recipe).is_file():
        from dlforge.core.errors import did_you_mean

        guess = did_you_mean(recipe, MODES) if mode == "simulation" else ""
        raise DlforgeError(f"recipe file '{recipe}' does not exist{guess}", where="RECIPE",
                           hint="dlforge federate [server|client] RECIPE [options]")
    if mode == "simulation":
        _refuse(mode, address=address, server=server, crash_at_round=crash_at_round)
        secure = ["federated.secure_aggregation=true"] if secure_aggregation else []
        result = federated.simulate(recipe, out=out, overrides=set_ + secure, overwrite=overwrite, clients=clients,
                                    fraction=fraction, rounds=rounds, partition=partition, strategy=strategy,
                                    target_accuracy=target_accuracy)
    elif mode == "server":
        _refuse(mode, server=server, partition=partition, crash_at_round=crash_at_round,
                secure_aggregation=secure_aggregation)
        result = federated.serve(recipe, address=address or federated.run.DEFAULT_ADDRESS, clients=clients,
                                 rounds=rounds, fraction=fraction, out=out, overwrite=overwrite,
                                 overrides=set_ + ([f"federated.strategy={strategy}"] if strategy else [])
                                 + ([f"federated.target_accuracy={target_accuracy}"] if target_accuracy is not None else []))
    else:
        _refuse(mode, address=address, clients=clients, fraction=fraction, rounds=rounds, strategy=strategy,
                target_accuracy=target_accuracy, out=out, overwrite=overwrite, secure_aggregation=secure_aggregation)
        done = federated.connect(recipe, server=server or federated.run.DEFAULT_ADDRESS, slot=partition or "1/1",
                                 overrides=set_, crash_at_round=crash_at_round)
        typer.echo(f"client {done['client']}/{done['of']} done: {done['rows']} rows, {done['seconds']:.1f} s")
        return
    history = result.history
    last = history[-1] if history else {}
    shown = ", ".join(f"{k} {v:.4f}" for k, v in last.items() if k.endswith((".accuracy", ".loss"))
                      and isinstance(v, float))
    target = result.metrics.get("federated", {}).get("target")
    if target:
        reached = (f"reached in round {target['reached_round']}" if target["reached_round"] is not None
                   else f"not reached in {len(history)} round(s)")
        shown += f"; target {target['split']} accuracy {target['accuracy']:g} {reached}"
    typer.echo(f"{result.run_dir}: {len(history)} round(s); last round: {shown}")
