"""Conversions between numpy arrays, data frames and the dropnet.v1 messages."""

from __future__ import annotations

import io
import json
import os
from typing import Any, Iterable, Iterator, List, Mapping, Optional, Sequence, Tuple, Union

import numpy as np
from google.protobuf import json_format

from dropnet.errors import InvalidArgument
from dropnet.v1 import model_pb2, service_pb2

PathLike = Union[str, "os.PathLike[str]"]

TASKS = {
    "classification": model_pb2.TASK_CLASSIFICATION,
    "regression": model_pb2.TASK_REGRESSION,
}
OPTIMIZERS = {
    "sgd": service_pb2.OPTIMIZER_SGD,
    "adam": service_pb2.OPTIMIZER_ADAM,
    "adamw": service_pb2.OPTIMIZER_ADAMW,
}
SCHEDULES = {
    "constant": service_pb2.SCHEDULE_CONSTANT,
    "step": service_pb2.SCHEDULE_STEP,
    "cosine": service_pb2.SCHEDULE_COSINE,
}


def choose(table: Mapping[str, int], value: Union[str, int], what: str) -> int:
    """The enum value for a name of `table` (case-insensitive), or the value itself."""
    if isinstance(value, int):
        return value
    try:
        return table[value.lower()]
    except KeyError:
        raise InvalidArgument(f"{what} must be one of {', '.join(table)}; got {value!r}") from None


def task_name(task: int) -> str:
    return "regression" if task == model_pb2.TASK_REGRESSION else "classification"


def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        b = n & 0x7F
        n >>= 7
        if n:
            out.append(b | 0x80)
        else:
            out.append(b)
            return bytes(out)


def to_tensor(rows: np.ndarray) -> model_pb2.Tensor:
    """A float32 tensor of the array's shape. The values are written as the packed field's bytes
    and parsed by protobuf, much faster than appending them one Python float at a time."""
    data = np.ascontiguousarray(rows, dtype="<f4")
    encoded = b"".join(b"\x08" + _varint(int(d)) for d in data.shape)
    if data.size:
        payload = data.tobytes()
        encoded += b"\x12" + _varint(len(payload)) + payload
    return model_pb2.Tensor.FromString(encoded)


def from_tensor(tensor: model_pb2.Tensor) -> Optional[np.ndarray]:
    """The tensor as a float32 array of its shape; None for an empty (unset) tensor."""
    if not tensor.shape:
        return None
    return np.asarray(tensor.values, dtype=np.float32).reshape(tuple(tensor.shape))


def as_array(x: Any) -> np.ndarray:
    """A data frame, array or nested list as a float32 array."""
    if hasattr(x, "to_numpy"):  # pandas DataFrame or Series
        x = x.to_numpy()
    try:
        return np.asarray(x, dtype=np.float32)
    except (TypeError, ValueError) as e:
        raise InvalidArgument(f"inputs must be numbers: {e}") from None


def as_batch(x: Any, input_shape: Sequence[int], model: str) -> Tuple[np.ndarray, bool]:
    """`x` as a batch [rows, ...] for a model whose rows have `input_shape`, and whether `x` was
    one row. A batch is any [rows, ...] whose per-row size matches (so [N, 64], [N, 8, 8] and
    [N, 1, 8, 8] all fit [64] or [1, 8, 8]); a single row is any array of one row's size."""
    a = as_array(x)
    width = int(np.prod(input_shape)) if len(input_shape) else 1
    if a.ndim >= 2 or (a.ndim == 1 and width == 1):
        per_row = int(np.prod(a.shape[1:])) if a.ndim > 1 else 1
        if per_row == width and len(a):
            return (a.reshape(-1, 1) if a.ndim == 1 else a), False
    if a.size == width:
        return a.reshape((1,) + tuple(input_shape)), True
    shapes = f"[rows, {width}]"
    if len(input_shape) > 1:
        shapes += f" or [rows, {', '.join(map(str, input_shape))}]"
    raise InvalidArgument(
        f"inputs of shape {tuple(a.shape)} do not fit model '{model}', whose rows have shape "
        f"{list(input_shape)}: pass {shapes}, or one row of {width} values")


def read_spec(spec: Any) -> model_pb2.ModelSpec:
    """A ModelSpec from its JSON mapping as a dict, a JSON file's path or the message itself."""
    if isinstance(spec, model_pb2.ModelSpec):
        return spec
    if isinstance(spec, (str, os.PathLike)):
        path = os.fspath(spec)
        if path.lstrip().startswith("{"):
            text = path
        else:
            with open(path, encoding="utf-8") as f:
                text = f.read()
        try:
            spec = json.loads(text)
        except json.JSONDecodeError as e:
            raise InvalidArgument(f"model spec {path!r} is not JSON: {e}") from None
    if not isinstance(spec, Mapping):
        raise InvalidArgument("spec must be a dict, a JSON file's path or a ModelSpec")
    try:
        return json_format.ParseDict(dict(spec), model_pb2.ModelSpec())
    except json_format.ParseError as e:
        raise InvalidArgument(f"bad model spec: {e}") from None


def message_dict(message: Any) -> dict:
    """A message as its JSON mapping (camelCase names, enums by name)."""
    return json_format.MessageToDict(message)


def csv_bytes(x: Any, y: Any, feature_names: Optional[List[str]], target: str) -> bytes:
    """Rows and their labels as CSV text with a header row, the target column last."""
    a = as_array(x)
    if a.ndim != 2:
        raise InvalidArgument(f"CSV upload needs flat rows [rows, features]; got {a.shape}")
    labels = np.asarray(y.to_numpy() if hasattr(y, "to_numpy") else y).reshape(-1)
    if len(labels) != len(a):
        raise InvalidArgument(f"{len(a)} rows but {len(labels)} labels")
    names = feature_names or [f"f{i}" for i in range(a.shape[1])]
    out = io.StringIO()
    out.write(",".join(_csv_field(n) for n in names + [target]) + "\n")
    for row, label in zip(a, labels):
        out.write(",".join(f"{v:.9g}" for v in row.tolist()))
        out.write("," + _csv_field(str(label)) + "\n")
    return out.getvalue().encode("utf-8")


def _csv_field(s: str) -> str:
    if any(c in s for c in ',"\n\r'):
        return '"' + s.replace('"', '""') + '"'
    return s


def row_chunks(x: np.ndarray, y: np.ndarray, rows_per_chunk: int
               ) -> Iterator[service_pb2.UploadDatasetRequest]:
    """Upload messages of at most `rows_per_chunk` rows each."""
    flat_x = x.reshape(len(x), -1)
    flat_y = y.reshape(len(y), -1)
    for start in range(0, len(x), rows_per_chunk):
        chunk = service_pb2.RowChunk()
        chunk.features.extend(flat_x[start:start + rows_per_chunk].ravel().tolist())
        chunk.targets.extend(flat_y[start:start + rows_per_chunk].ravel().tolist())
        yield service_pb2.UploadDatasetRequest(rows=chunk)


def file_chunks(path: PathLike, chunk_bytes: int) -> Iterator[service_pb2.UploadDatasetRequest]:
    with open(path, "rb") as f:
        while True:
            block = f.read(chunk_bytes)
            if not block:
                return
            yield service_pb2.UploadDatasetRequest(csv_chunk=block)


def bytes_chunks(data: bytes, chunk_bytes: int) -> Iterable[service_pb2.UploadDatasetRequest]:
    for start in range(0, len(data), chunk_bytes):
        yield service_pb2.UploadDatasetRequest(csv_chunk=data[start:start + chunk_bytes])
