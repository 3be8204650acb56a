"""How an input type meets the outside world: its API field, its form part, the column it accepts, a sample.

A trained model describes each input by its signature (`{"type": "number", ...}` in model.json). The
server, `Predictor.predict`, `dlforge predict` and `dlforge init` all need per-type answers: what
JSON to accept, how to coerce a request or a Python value into the column the feature transforms,
what a plausible row looks like, what recipe entry `init` writes. Each type answers them in its own
feature file, by registering an `InputKind` under the type's name, so a new input type (audio, id)
is one file with no edit to serve, predict or init. An input type without a kind (a model newer than
this dlforge) gets the base class: values pass through and the feature validates them.

Kinds are stateless (`kind_of` makes one per call; that costs nothing): every method takes the input's
signature. pydantic is used for the API field (the data layer may); FastAPI is not (it sits above, in serve/).
"""

from __future__ import annotations

import base64
import binascii
from pathlib import Path
from typing import Annotated, Any

import numpy as np
from pydantic import Field

from dlforge.core.registry import Registry

# Text and category values longer than this are refused (422): no real category is this long, and
# it bounds the work a single field can cause.
MAX_STRING = 10_000
# Numbers beyond this overflow float32 arithmetic in the model (its limit is 3.4e38) after scaling.
MAX_NUMBER = 1e30

Text = Annotated[str, Field(strict=True, max_length=MAX_STRING)]


def file_from_base64(text: str, what: str) -> bytes:
    """A file sent as base64, or as a data: URL (`data:image/png;base64,...`), as its bytes; `what` names it in
    the ValueError ("image", "sound file")."""
    text = text.strip()
    if text[:5].lower() == "data:" and ";base64," in text[:100]:
        text = text.split(",", 1)[1]
    try:
        data = base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise ValueError(f"not valid base64 (send the {what}'s bytes base64-encoded, or a data: URL)") from None
    if not data:
        raise ValueError(f"the {what} is empty")
    return data


def sent_file(value: Any, what: str) -> bytes | None:
    """A file sent as a multipart upload (bytes) or as base64 text, as its bytes; None for any other value."""
    if isinstance(value, (bytes, bytearray)):
        if not value:
            raise ValueError("the uploaded file is empty")
        return bytes(value)
    if isinstance(value, str):
        return file_from_base64(value, what)
    return None


def object_column(values) -> np.ndarray:
    """A 1-D object array, item by item: numpy would try to broadcast a list of arrays or nested lists."""
    column = np.empty(len(values), dtype=object)
    for i, value in enumerate(values):
        column[i] = value
    return column


class InputKind:
    """One input type's behaviour at the edges. The defaults pass values through unchanged."""

    # A value may be a file: a path on the command line, an upload in a form (checked for its pixel count).
    file_input: bool = False

    def api_field(self, name: str, sig: dict) -> tuple[Any, Any]:
        """The pydantic (annotation, FieldInfo) of this input in a JSON request; `alias` keeps names such as 'a-b'."""
        return Any, Field(..., alias=name, description=f"A '{sig.get('type')}' input.")

    def form_part(self, sig: dict) -> dict:
        """The OpenAPI schema of this input's part in a multipart/form-data request."""
        return {"type": "string", "maxLength": MAX_STRING}

    def form_value(self, value: str | bytes):
        """A multipart part (text or file bytes) as the JSON value it stands for; ValueError names the expectation."""
        return value

    def request_column(self, values: list, sig: dict) -> np.ndarray:
        """Validated JSON values of many records (one per row) as the column the feature transforms."""
        return object_column(values)

    def python_column(self, value, sig: dict, name: str) -> np.ndarray:
        """What a Python caller passed for this input (a list, an array, one value) as one column."""
        from dlforge.core.errors import PredictError

        if np.isscalar(value) or value is None:
            return np.array([value], dtype=object)
        array = np.asarray(value, dtype=object if not isinstance(value, np.ndarray) else None)
        if array.ndim != 1:
            raise PredictError(f"input '{name}' ({sig['type']}) expects one value per row; got shape {array.shape}")
        return array

    def table_column(self, values: np.ndarray, root: str | Path | None) -> np.ndarray:
        """A column read from a file (CSV, Parquet) whose relative references are relative to `root`."""
        return values

    def sample(self, sig: dict):
        """One plausible value (the server's warm-up row, the web page's default)."""
        return "warm up"

    def init_entry(self, values: np.ndarray) -> dict:
        """What `dlforge init` adds to `{name, type}` for a column of this type (encoder, preprocessing)."""
        return {}


input_kinds: Registry[type[InputKind]] = Registry("input kind")
PASS_THROUGH = InputKind()


def kind_of(sig_or_type: dict | str) -> InputKind:
    """The kind of an input signature (or type name); the pass-through kind for a type this dlforge predates."""
    import dlforge.data.features  # noqa: F401  (each feature file registers its kind)

    name = sig_or_type.get("type") if isinstance(sig_or_type, dict) else sig_or_type
    return input_kinds.get(name)() if name in input_kinds else PASS_THROUGH


__all__ = ["InputKind", "file_from_base64", "MAX_NUMBER", "MAX_STRING", "PASS_THROUGH", "Text", "input_kinds", "kind_of", "object_column",
           "sent_file"]
