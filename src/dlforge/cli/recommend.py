"""`dlforge recommend RUN --user 42 -k 10 [--exclude-seen]` and `--item 50` (similar items)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import typer

from dlforge.core.errors import DlforgeError

commands = typer.Typer()


@commands.command()
def recommend(
    run: Path = typer.Argument(..., help="A recommender run directory (combiner mf, two_tower or neumf)."),
    user: Optional[str] = typer.Option(None, "--user", help="Recommend to this user id."),
    item: Optional[str] = typer.Option(None, "--item", help="Items similar to this item id (instead of --user)."),
    k: int = typer.Option(10, "-k", "--k", help="How many items (1 to 1000)."),
    exclude_seen: bool = typer.Option(True, "--exclude-seen/--include-seen",
                                      help="Leave out the items the user has interacted with (default)."),
    feature: list[str] = typer.Option([], "--feature", help="A new user's side feature, NAME=VALUE (repeatable): "
                                      "a user never seen in training is scored from them when the model has user "
                                      "side features, else by popularity."),
    as_json: bool = typer.Option(False, "--json", help="Print the answer as JSON."),
):
    """Top-k items for a user (or the items most similar to an item), scored over the whole catalogue."""
    if not run.is_dir() or not (run / "model.json").is_file():
        raise DlforgeError(f"no run at {run} (expected a directory with model.json)", where="RUN",
                           hint="give the --out directory of `dlforge train`, e.g. runs/movielens-ranking")
    if not 1 <= k <= 1000:
        raise DlforgeError(f"-k must be from 1 to 1000; got {k}", where="-k", hint="e.g. -k 10")
    features = {}
    for entry in feature:
        name, sep, value = entry.partition("=")
        if not sep or not name:
            raise DlforgeError(f"--feature {entry!r} is not NAME=VALUE", where="--feature", hint="e.g. --feature age=30")
        features[name] = value
    import dlforge

    predictor = dlforge.load(run)
    unknown = sorted(set(features) - set(getattr(predictor.model, "user_side", [])))
    if unknown:
        known = getattr(predictor.model, "user_side", [])
        raise DlforgeError(f"--feature names {unknown} are not user side features of this model", where="--feature",
                           hint=f"user side features: {', '.join(known) or 'none (the popularity fallback serves new users)'}")
    answer = predictor.recommend(user, item=item, k=k, exclude_seen=exclude_seen, features=features)
    if as_json:
        typer.echo(json.dumps(answer))
        return
    who = f"user {answer['user']}" if item is None else f"items similar to {answer['item']}"
    how = {"model": "the model", "side_features": "the model from the user's side features (new user)",
           "popularity": "popularity (a new user, and the model has no user side features)"}[answer["source"]]
    typer.echo(f"{who}: top {len(answer['items'])} by {how}" + (", seen items left out" if item is None and exclude_seen
                                                                 else ""))
    for rank, entry in enumerate(answer["items"], start=1):
        typer.echo(f"{rank:3d}. {entry['item']}  {entry['score']:.4f}")
