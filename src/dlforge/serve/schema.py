"""Request and response models of the REST API, generated from the model's input signature.

Each model input becomes one typed, documented field of a `Record` (numbers are floats, categories
strings with example values, binary inputs an enum of their two values, images base64 or a pixel
array), so the OpenAPI schema tells a client exactly what to send and validation names the field
that is wrong. Unknown keys are errors, never dropped.
"""

from __future__ import annotations

import base64
import binascii
import re
from typing import Annotated, Any, Literal, Optional, Union

import numpy as np
from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, WithJsonSchema, create_model

# Text and category values longer than this are refused (422): no real category is this long, and
# it bounds the work a single field can cause.
MAX_STRING = 10_000
# Numbers beyond this overflow float32 arithmetic in the model (its limit is 3.4e38) after scaling.
MAX_NUMBER = 1e30
DATA_URL = re.compile(r"^data:image/[\w.+-]+;base64,", re.IGNORECASE)


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


# ---------------------------------------------------------------- request fields per input type
def _decode_base64(text: str) -> bytes:
    text = DATA_URL.sub("", text.strip(), count=1)
    try:
        data = base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise ValueError("not valid base64 (send the image file's bytes base64-encoded, or a data: URL)") from None
    if not data:
        raise ValueError("the image is empty")
    return data


def _image_validator(shape: list[int]):
    channels, height, width = shape

    def parse(value: Any) -> Union[bytes, np.ndarray]:
        if isinstance(value, (bytes, bytearray)):  # a multipart file upload
            if not value:
                raise ValueError("the uploaded file is empty")
            return bytes(value)
        if isinstance(value, str):
            return _decode_base64(value)
        if isinstance(value, list):
            try:
                array = np.asarray(value, dtype=np.float32)
            except (ValueError, TypeError):
                raise ValueError("a pixel array must be a rectangular nested list of numbers") from None
            if array.ndim == 2:
                array = array[:, :, None]
            if array.ndim != 3 or array.shape[:2] != (height, width) or array.shape[2] not in (1, 3):
                raise ValueError(f"a pixel array must be {height}x{width} (grey) or {height}x{width}x3 (RGB); "
                                 f"got shape {list(np.shape(value))}")
            if not np.isfinite(array).all() or array.min() < 0 or array.max() > 255:
                raise ValueError("pixel values must be numbers from 0 to 255")
            if array.shape[2] != channels:  # grey <-> RGB, as the training pipeline converts files
                array = (np.repeat(array, 3, axis=2) if channels == 3
                         else (array @ np.array([0.299, 0.587, 0.114], dtype=np.float32))[:, :, None])
            return array.round().astype(np.uint8)
        raise ValueError("an image is a base64 string (or data: URL) or a nested list of pixel values")

    pixel = {"type": "number", "minimum": 0, "maximum": 255}
    schema = {
        "description": f"An image: the file's bytes base64-encoded (PNG, JPEG, ...; resized to {height}x{width}), "
                       f"or pixel values 0-255 as a {height}x{width} (grey) or {height}x{width}x3 (RGB) nested list.",
        "anyOf": [
            {"type": "string", "contentEncoding": "base64", "contentMediaType": "image/*", "minLength": 1},
            {"type": "array", "minItems": height, "maxItems": height, "description": "grey pixels, row by row",
             "items": {"type": "array", "minItems": width, "maxItems": width, "items": pixel}},
            {"type": "array", "minItems": height, "maxItems": height, "description": "RGB pixels, row by row",
             "items": {"type": "array", "minItems": width, "maxItems": width,
                       "items": {"type": "array", "minItems": 3, "maxItems": 3, "items": pixel}}},
        ],
    }
    return Annotated[Any, BeforeValidator(parse), WithJsonSchema(schema)]


Text = Annotated[str, Field(strict=True, max_length=MAX_STRING)]


def field_type(name: str, sig: dict):
    """The (annotation, FieldInfo) of one model input; `alias` keeps names such as 'hours-per-week'."""
    kind = sig.get("type")
    if kind == "number":
        annotation = Optional[Annotated[float, Field(strict=True, allow_inf_nan=False, ge=-MAX_NUMBER, le=MAX_NUMBER)]]
        info = Field(..., alias=name, description="A number; null means missing (filled as in training).",
                     examples=[0.0])
    elif kind == "category":
        values = [str(v) for v in sig.get("values", [])]
        annotation = Optional[Union[Text, Annotated[int, Field(strict=True)]]]
        info = Field(..., alias=name, examples=values[:5] or None,
                     description="A category; values never seen in training (or null) count as unknown. "
                                 + (f"Known values include: {', '.join(values[:20])}." if values else ""))
    elif kind == "binary":
        values = [v for v in sig.get("values", []) if v is not None]
        annotation = Optional[Literal[tuple(values)]] if values else Optional[Text]
        info = Field(..., alias=name, description=f"One of {values}; null counts as '{values[0] if values else ''}'.")
    elif kind == "image":
        annotation = _image_validator(sig["shape"])
        info = Field(..., alias=name)
    elif kind == "text":
        annotation = Text
        info = Field(..., alias=name, description="Text.", examples=["some text"])
    else:  # an input type this server predates: pass it through and let the model's features validate it
        annotation = Any
        info = Field(..., alias=name, description=f"A '{kind}' input.")
    return annotation, info


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
        top_k=(Optional[Annotated[int, Field(strict=True)]],
               Field(None, ge=1, le=classes,
                     description="How many most-probable classes to return per output (default: up to 5).")),
    )
    request.__doc__ = "A prediction request: one or more records."
    return record, request


def multipart_schema(signature: dict) -> dict:
    """The OpenAPI schema of the multipart/form-data form: one part per input, images as file uploads."""
    props, required = {}, []
    for name, sig in signature["inputs"].items():
        kind = sig.get("type")
        if kind == "image":
            props[name] = {"type": "string", "format": "binary", "description": "The image file."}
        elif kind == "number":
            props[name] = {"type": "number", "minimum": -MAX_NUMBER, "maximum": MAX_NUMBER,
                           "description": "A number (empty: missing)."}
        elif kind == "binary":
            props[name] = {"type": "string", "enum": [v for v in sig.get("values", []) if v is not None]}
        else:
            props[name] = {"type": "string", "maxLength": MAX_STRING}
        required.append(name)
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
