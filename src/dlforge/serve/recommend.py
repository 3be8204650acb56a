"""`POST /v1/recommend`: top-k items for users (or items similar to items), micro-batched like /v1/predict.

One query at the top level (`{"user": "42", "k": 10}`) or several (`{"queries": [...]}`, at most max_records);
concurrent requests share one batch, and a batch scores all its users against every item in one matrix
product (artifact/recommend.py). Bad input is 422 with the field named; a run that is not a recommender answers
404 for this route. The answer says where each list came from: `model`, `side_features` (a new user scored
from the features sent) or `popularity` (a new user, and the model has no user side features).
"""

from __future__ import annotations

import json
import time
from typing import Annotated, Optional, Union

from fastapi import Request
from fastapi.responses import Response
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from dlforge.artifact.recommend import MAX_K, Query
from dlforge.core.errors import DlforgeError
from dlforge.data.features.wire import MAX_NUMBER, Text
from dlforge.serve.batcher import Batcher, QueueFull, ShuttingDown
from dlforge.serve.schema import validation_problems

Id = Union[Text, Annotated[int, Field(strict=True)]]
FeatureValue = Optional[Union[Text, Annotated[float, Field(strict=True, allow_inf_nan=False, ge=-MAX_NUMBER,
                                                           le=MAX_NUMBER)]]]


class RecommendQuery(BaseModel):
    model_config = ConfigDict(extra="forbid")
    user: Optional[Id] = Field(None, description="Recommend to this user (a new user: see `features`).")
    item: Optional[Id] = Field(None, description="Instead of a user: the items most similar to this item.")
    k: Annotated[int, Field(strict=True, ge=1, le=MAX_K)] = Field(10, description="How many items.")
    exclude_seen: bool = Field(True, description="Leave out items the user has interacted with.")
    features: dict[Annotated[str, Field(max_length=200)], FeatureValue] = Field(
        {}, max_length=100, description="A new user's side features by input name (used by two-tower models).")


def request_model(max_records: int) -> type[BaseModel]:
    class RecommendBatch(BaseModel):
        model_config = ConfigDict(extra="forbid")
        queries: list[RecommendQuery] = Field(..., min_length=1, max_length=max_records)

    return RecommendBatch


def run_jobs(recommender, jobs: list[list[Query]]) -> list:
    """One list of answers (or a DlforgeError) per request, from one batched call when every query is good."""
    flat = [q for job in jobs for q in job]
    try:
        answers = recommender().run(flat)
    except DlforgeError:
        if len(jobs) == 1:
            raise
        out: list = []
        for job in jobs:  # find the request at fault; the others still get answers
            try:
                out.append(recommender().run(job))
            except DlforgeError as exc:
                out.append(exc)
        return out
    out, start = [], 0
    for job in jobs:
        out.append(answers[start:start + len(job)])
        start += len(job)
    return out


def add_recommend_route(app, *, state, config, meta: dict, version: str, batcher: Batcher, api_error, invalid,
                        read) -> None:
    """The route on `app`; `api_error(status, detail)` builds the app's error, `read(request)` the checked body."""
    batch_model = request_model(config.max_records)
    user_side = {f["name"] for f in meta["recipe"]["inputs"] if f.get("tower") == "user"}
    is_recommender = meta["recipe"].get("combiner", {}).get("name") in ("mf", "two_tower", "neumf")

    @app.post("/v1/recommend", tags=["model"], summary="Top-k items for a user, or items similar to an item.",
              responses={404: {"description": "not a recommender"}, 413: {"description": "body too large"},
                         422: {"description": "invalid input"}, 503: {"description": "loading or busy"}})
    async def recommend(request: Request):
        if not is_recommender:
            raise api_error(404, f"model '{meta['name']}' is not a recommender; use /v1/predict")
        if state.status != "ready":
            raise api_error(503, f"the model is {state.status}", headers={"Retry-After": "1"})
        batcher.incoming(+1)
        try:
            body = await read(request)
        finally:
            batcher.incoming(-1)
        try:
            data = json.loads(body)
        except (ValueError, UnicodeDecodeError):
            raise api_error(422, "the body is not valid JSON") from None
        single = not (isinstance(data, dict) and "queries" in data)
        try:
            queries = [RecommendQuery.model_validate(data)] if single else batch_model.model_validate(data).queries
        except ValidationError as exc:
            raise invalid(validation_problems(exc)) from None
        for i, q in enumerate(queries):
            where = "" if single else f"queries.{i}."
            if (q.user is None) == (q.item is None):
                raise api_error(422, f"{where or 'body'}: give a user or an item, not both or neither")
            unknown = sorted(set(q.features) - user_side)
            if unknown:
                raise api_error(422, f"{where}features: {unknown[:3]} are not user side features of this model "
                                     f"(known: {', '.join(sorted(user_side)) or 'none'})")
        job = [Query(user=q.user, item=q.item, k=q.k, exclude_seen=q.exclude_seen, features=dict(q.features))
               for q in queries]
        started = time.perf_counter()
        try:
            answers = await batcher.submit(job, len(job), timeout=config.timeout_s)
        except QueueFull:
            raise api_error(503, f"server busy: {config.max_queue} requests are already waiting",
                            headers={"Retry-After": "1"}) from None
        except ShuttingDown:
            raise api_error(503, "the server is shutting down", headers={"Retry-After": "5"}) from None
        except TimeoutError:
            raise api_error(504, f"no answer within {config.timeout_s:g} s") from None
        except DlforgeError as exc:
            raise api_error(422, exc.message) from None
        head = {"model": meta["name"], "version": version}
        payload = {**head, **answers[0]} if single else {**head, "recommendations": answers}
        return Response(json.dumps(payload).encode(), media_type="application/json",
                        headers={"Server-Timing": f"batch;dur={(time.perf_counter() - started) * 1e3:.2f}"})


__all__ = ["RecommendQuery", "add_recommend_route", "run_jobs"]
