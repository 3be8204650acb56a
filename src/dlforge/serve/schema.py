"""Request and response models of the REST API, generated from the model's input signature.

Each model input becomes one typed, documented field of a `Record` (numbers are floats, categories
strings with example values, binary inputs an enum of their two values, images base64 or a pixel
array), so the OpenAPI schema tells a client exactly what to send and validation names the field
that is wrong. Unknown keys are errors, never dropped. The field of each input type, and its
multipart form part, come from the type's kind (data/features/<type>.py), so a new input type
needs no edit here.
"""

from __future__ import annotations

from typing import Annotated, Optional

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, WithJsonSchema, create_model

from dlforge.data.features.wire import MAX_NUMBER, MAX_STRING, kind_of  # noqa: F401  (MAX_*: the limits clients see)


class ApiModel(BaseModel):
    model_config = ConfigDict(extra="forbid")


# ---------------------------------------------------------------- responses
class ClassProbability(ApiModel):
    label: str
    probability: float = Field(ge=0.0, le=1.0)


class OutputResult(ApiModel):
    label: Optional[str] = Field(None, description="Predicted class (category and binary outputs).")
    value: Optional[float] = Field(None, description="Predicted value (number outputs).")
    probability: Optional[float] = Field(None, ge=0.0, le=1.0, description="Probability of the predicted class.")
    top_k: Optional[list[ClassProbability]] = Field(None, description="The k most probable classes, most probable first.")


class Prediction(OutputResult):
    outputs: Optional[dict[str, OutputResult]] = Field(
        None, description="Every output by name; present only when the model has several (the fields above are the first).")


class PredictResponse(ApiModel):
    model: str = Field(description="The model's name (the recipe's `name`).")
    version: str = Field(description="Content hash of the weights: changes whenever the model does.")
    output: str = Field(description="Name of the output the top-level fields of each prediction describe.")
    predictions: list[Prediction] = Field(description="One prediction per record, in request order.")


class FieldProblem(ApiModel):
    field: str = Field(description="Dotted path of the offending field, e.g. `records.0.age`.")
    message: str


class ErrorResponse(ApiModel):
    detail: str = Field(description="What went wrong, in one line.")
    errors: Optional[list[FieldProblem]] = Field(None, description="Each invalid field (validation errors only).")


class Status(ApiModel):
    status: str


class Failed(ApiModel):
    status: str
    detail: str


# ---------------------------------------------------------------- request fields per input type
def field_type(name: str, sig: dict):
    """The (annotation, FieldInfo) of one model input, from its type's kind (data/features/<type>.py)."""
    return kind_of(sig).api_field(name, sig)


def max_classes(signature: dict) -> int:
    """The most classes of any output (a binary output has 2, a number output 1): the largest useful top_k."""
    return max([len(o.get("labels") or []) for o in signature["outputs"].values()] + [1])


def build_request_models(signature: dict, *, max_records: int) -> tuple[type[BaseModel], type[BaseModel]]:
    """The `Record` (one row: every model input, typed) and `PredictRequest` models for this signature."""
    fields = {f"input_{i}": field_type(name, sig) for i, (name, sig) in enumerate(signature["inputs"].items())}
    record = create_model("Record", __config__=ConfigDict(extra="forbid", populate_by_name=False,
                                                          title="Record"), **fields)
    record.__doc__ = "One row to predict: a value for every model input."
    classes = max_classes(signature)
    request = create_model(
        "PredictRequest", __config__=ConfigDict(extra="forbid", title="PredictRequest"),
        records=(list[record], Field(..., min_length=1, max_length=max_records,
                                     description=f"The rows to predict (1 to {max_records}); one prediction each.")),
        # JSON Schema counts 1.0 as an integer, so it is taken as 1; 1.5, true and "2" stay refused (strict int).
        top_k=(Optional[Annotated[int, BeforeValidator(integral_float), Field(strict=True, ge=1, le=classes),
                                  WithJsonSchema({"type": "integer", "minimum": 1, "maximum": classes})]],
               Field(None, description="How many most-probable classes to return per output (default: up to 5).")),
    )
    request.__doc__ = "A prediction request: one or more records."
    return record, request


def integral_float(value):
    """1.0 -> 1 (JSON Schema's integer includes it); anything else as given, for the strict int check."""
    return int(value) if isinstance(value, float) and value.is_integer() else value


def multipart_schema(signature: dict) -> dict:
    """The OpenAPI schema of the multipart/form-data form: one part per input, images as file uploads."""
    props = {name: kind_of(sig).form_part(sig) for name, sig in signature["inputs"].items()}
    required = list(props)
    props["top_k"] = {"type": "integer", "minimum": 1, "maximum": max_classes(signature)}
    return {"type": "object", "properties": props, "required": required, "additionalProperties": False}


# Parts of a pydantic error location that name a union member or a validator, not a field.
_TAGS = ("function-", "json-or-python", "constrained-", "literal[", "nullable")
_TYPE_TAGS = frozenset({"str", "int", "float", "bool", "none", "list", "dict", "bytes"})


def validation_problems(exc) -> list[dict]:
    """pydantic errors as [{field, message}]: dotted paths with the inputs' real names, one entry per field
    (the members of a union, such as 'a string or an integer', are merged into one message)."""
    merged: dict[str, list[str]] = {}
    for error in exc.errors(include_url=False):
        parts = [str(p) for p in error["loc"] if not str(p).startswith(_TAGS)]
        keep = 3 if parts[:1] == ["records"] else 1  # records.<row>.<input name> may be called 'int' or 'str'
        loc = parts[:keep] + [p for p in parts[keep:] if p not in _TYPE_TAGS]
        merged.setdefault(".".join(loc) or "body", []).append(error["msg"].replace("Value error, ", ""))
    problems = []
    for field, messages in merged.items():
        extra = [m.removeprefix("Input should be ") for m in messages[1:] if m != messages[0]]
        problems.append({"field": field, "message": messages[0] + (f" (or {', '.join(extra)})" if extra else "")})
    return problems
