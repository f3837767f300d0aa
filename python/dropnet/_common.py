"""What the blocking and the asyncio client share: connection settings, request building and
the conversion of answers."""

from __future__ import annotations

import dataclasses
import itertools
import json
import os
from typing import Any, Iterator, List, Optional, Sequence, Tuple, Union

import grpc
import numpy as np

from dropnet import _convert
from dropnet.errors import DropnetError, InvalidArgument
from dropnet.types import Evaluation, ExportedModel, Prediction, Ranking, Uncertainty
from dropnet.v1 import model_pb2, service_pb2

DEFAULT_TARGET = "127.0.0.1:50051"
CHUNK_BYTES = 1 << 20


@dataclasses.dataclass(frozen=True)
class TLS:
    """TLS settings: ``ca`` the PEM file of the CA that signed the server's certificate (None:
    the system's roots); ``cert`` and ``key`` a client certificate for mutual TLS;
    ``server_name`` overrides the name checked against the server's certificate."""

    ca: Optional[Union[str, "os.PathLike[str]"]] = None
    cert: Optional[Union[str, "os.PathLike[str]"]] = None
    key: Optional[Union[str, "os.PathLike[str]"]] = None
    server_name: Optional[str] = None


TLSArg = Union[bool, TLS, str, "os.PathLike[str]", None]


def _read(path: Optional[Union[str, "os.PathLike[str]"]]) -> Optional[bytes]:
    if path is None:
        return None
    with open(path, "rb") as f:
        return f.read()


def service_config(max_attempts: int) -> str:
    """UNAVAILABLE is retried with backoff by gRPC itself, as the C++ client does."""
    return json.dumps({
        "loadBalancingConfig": [{"round_robin": {}}],
        "methodConfig": [{
            "name": [{"service": "dropnet.v1.Dropnet"}, {"service": "grpc.health.v1.Health"}],
            "retryPolicy": {
                "maxAttempts": max(2, min(max_attempts, 5)), "initialBackoff": "0.1s",
                "maxBackoff": "2s", "backoffMultiplier": 2,
                "retryableStatusCodes": ["UNAVAILABLE"],
            },
        }],
    })


def channel_settings(tls: TLSArg, max_message_bytes: int, max_attempts: int,
                     options: Sequence[Tuple[str, Any]]
                     ) -> Tuple[Optional[grpc.ChannelCredentials], List[Tuple[str, Any]]]:
    """The credentials (None: plaintext) and channel options of a client."""
    opts: List[Tuple[str, Any]] = [
        ("grpc.max_receive_message_length", max_message_bytes),
        ("grpc.max_send_message_length", max_message_bytes),
        ("grpc.enable_retries", 1),
        ("grpc.service_config", service_config(max_attempts)),
    ]
    creds = None
    if tls is not None and tls is not False:
        if tls is True:
            tls = TLS()
        elif isinstance(tls, (str, os.PathLike)):
            tls = TLS(ca=tls)
        creds = grpc.ssl_channel_credentials(
            root_certificates=_read(tls.ca), private_key=_read(tls.key),
            certificate_chain=_read(tls.cert))
        if tls.server_name:
            opts.append(("grpc.ssl_target_name_override", tls.server_name))
    opts.extend(options)
    return creds, opts


def metadata(token: Optional[str]) -> Optional[Tuple[Tuple[str, str], ...]]:
    """The bearer token as the server reads it: ``authorization: Bearer <token>``."""
    return (("authorization", f"Bearer {token}"),) if token else None


# grpc.health.v1 has no generated Python module here (its package name would collide with the
# grpc package); HealthCheckRequest and HealthCheckResponse have one field each.
HEALTH_CHECK = "/grpc.health.v1.Health/Check"
SERVING = 1


def encode_health_request(service: str) -> bytes:
    raw = service.encode("utf-8")
    return b"\x0a" + _convert._varint(len(raw)) + raw if raw else b""


def decode_health_response(data: bytes) -> int:
    """The status field (1, varint) of a HealthCheckResponse; 0 (UNKNOWN) when absent."""
    i, status = 0, 0
    while i < len(data):
        key, i = _read_varint(data, i)
        if key & 7 == 0:
            value, i = _read_varint(data, i)
            if key >> 3 == 1:
                status = value
        elif key & 7 == 2:
            length, i = _read_varint(data, i)
            i += length
        else:
            raise ValueError("unexpected field in HealthCheckResponse")
    return status


def _read_varint(data: bytes, i: int) -> Tuple[int, int]:
    value, shift = 0, 0
    while True:
        b = data[i]
        i += 1
        value |= (b & 0x7F) << shift
        shift += 7
        if not b & 0x80:
            return value, i


@dataclasses.dataclass
class ModelMeta:
    """What the client remembers of a model to shape its inputs and name its classes."""

    input_shape: Tuple[int, ...]
    version: int
    # Data set of each epoch record, oldest first: (version, data set).
    trained_on: List[Tuple[int, str]]


def model_meta(info: service_pb2.ModelInfo) -> ModelMeta:
    return ModelMeta(tuple(info.spec.input_shape), info.version,
                     [(r.version, r.dataset) for r in info.history])


def dataset_for_version(meta: ModelMeta, version: int) -> Optional[str]:
    """The data set that trained the given version (the newest epoch at or before it)."""
    name = None
    for v, dataset in meta.trained_on:
        if v <= version:
            name = dataset
    return name


def upload_messages(name: str, x: Any, y: Any, task: Union[str, int], target: Optional[str],
                    input_shape: Optional[Sequence[int]], overwrite: bool, rows_per_chunk: int
                    ) -> Iterator[service_pb2.UploadDatasetRequest]:
    """The UploadDataset stream for a CSV file, a data frame, or arrays of rows and labels.

    A data frame or rows with non-numeric labels go as CSV text (the server names the classes
    after the labels, sorted); numeric rows go as float chunks. Everything is checked here,
    before the call: gRPC reads the stream on a thread of its own, where an error would only
    cancel the call."""
    header = service_pb2.DatasetHeader(
        name=name, task=_convert.choose(_convert.TASKS, task, "task"), overwrite=overwrite)
    chunks: Iterator[service_pb2.UploadDatasetRequest]
    if isinstance(x, (str, os.PathLike)):
        if y is not None:
            raise InvalidArgument("a CSV file holds its labels: pass target='column' instead of y")
        if not os.path.isfile(x):
            raise FileNotFoundError(f"no CSV file {os.fspath(x)!r}")
        header.target_column = target or ""
        chunks = _convert.file_chunks(x, CHUNK_BYTES)
    elif hasattr(x, "columns"):  # a pandas DataFrame
        if y is None or isinstance(y, str):
            column = y if isinstance(y, str) else target
            if column is None:
                raise InvalidArgument("pass the labels as y, or name their column (target=)")
            y = x[column]
            x = x.drop(columns=[column])
        names = [str(c) for c in x.columns]
        label = target or (str(y.name) if getattr(y, "name", None) is not None else "target")
        header.target_column = label
        chunks = _convert.bytes_chunks(_convert.csv_bytes(x, y, names, label), CHUNK_BYTES)
    else:
        if y is None:
            raise InvalidArgument("pass the labels (y) with the rows")
        labels = np.asarray(y.to_numpy() if hasattr(y, "to_numpy") else y)
        if labels.dtype.kind in "OUS":
            header.target_column = target or "target"
            chunks = _convert.bytes_chunks(
                _convert.csv_bytes(x, labels, None, header.target_column), CHUNK_BYTES)
        else:
            rows = _convert.as_array(x)
            labels = labels.astype(np.float32)
            if rows.ndim < 1 or labels.ndim < 1 or len(rows) != len(labels):
                raise InvalidArgument(f"{len(rows) if rows.ndim else 0} rows but "
                                      f"{len(labels) if labels.ndim else 0} labels")
            if rows.ndim == 1:
                rows = rows.reshape(-1, 1)
            header.input_shape.extend(input_shape if input_shape is not None else rows.shape[1:])
            header.targets_per_row = 1 if labels.ndim == 1 else int(np.prod(labels.shape[1:]))
            chunks = _convert.row_chunks(rows, labels, rows_per_chunk)
    return itertools.chain([service_pb2.UploadDatasetRequest(header=header)], chunks)


def train_request(model: str, data: str, epochs: int, batch_size: int,
                  optimizer: Union[str, int], learning_rate: float, momentum: Optional[float],
                  nesterov: bool, weight_decay: float, max_norm: float, validation_split: float,
                  early_stopping_patience: int, seed: int, schedule: Union[str, int],
                  schedule_step_epochs: int, schedule_gamma: float, standardize: bool,
                  report_every_steps: int) -> service_pb2.TrainRequest:
    req = service_pb2.TrainRequest(
        model=model, dataset=data, epochs=epochs, batch_size=batch_size,
        optimizer=_convert.choose(_convert.OPTIMIZERS, optimizer, "optimizer"),
        learning_rate=learning_rate, nesterov=nesterov, weight_decay=weight_decay,
        max_norm=max_norm, validation_split=validation_split,
        early_stopping_patience=early_stopping_patience, seed=seed,
        schedule=_convert.choose(_convert.SCHEDULES, schedule, "schedule"),
        schedule_step_epochs=schedule_step_epochs, schedule_gamma=schedule_gamma,
        standardize=standardize, report_every_steps=report_every_steps)
    if momentum is not None:
        req.momentum = momentum
    return req


VersionArg = Optional[Union[int, str]]


def version_text(version: VersionArg) -> str:
    """A version argument as the request's string: a number (12 or "12"), a label ("stable"),
    or None for the model's default."""
    if version is None:
        return ""
    if isinstance(version, bool) or not isinstance(version, (int, str)):
        raise InvalidArgument(f"version must be a number or a label, got {version!r}")
    return str(version)


def list_models_request(page_size: int, token: str) -> service_pb2.ListModelsRequest:
    return service_pb2.ListModelsRequest(page_size=page_size, page_token=token)


def create_request(name: str, spec: Any, serving_label: Optional[str],
                   keep_versions: Optional[int]) -> service_pb2.CreateModelRequest:
    return service_pb2.CreateModelRequest(
        name=name, spec=_convert.read_spec(spec), serving_label=serving_label or "",
        keep_versions=keep_versions or 0)


def update_request(model: str, serving_label: Optional[str],
                   keep_versions: Optional[int]) -> service_pb2.UpdateModelRequest:
    req = service_pb2.UpdateModelRequest(model=model)
    if serving_label is not None:
        req.serving_label = serving_label
    if keep_versions is not None:
        req.keep_versions = keep_versions
    return req


EXPORT_MODES = {"eval": service_pb2.EXPORT_MODE_EVAL, "train": service_pb2.EXPORT_MODE_TRAIN}


def onnx_bytes(model: Any) -> bytes:
    """An ONNX model as bytes: bytes themselves, a file's path, or an object with
    ``SerializeToString`` (an ``onnx.ModelProto``)."""
    if isinstance(model, (bytes, bytearray, memoryview)):
        return bytes(model)
    if isinstance(model, (str, os.PathLike)):
        with open(model, "rb") as f:
            return f.read()
    if hasattr(model, "SerializeToString"):
        return model.SerializeToString()
    raise InvalidArgument("onnx_model must be bytes, a file's path or an onnx.ModelProto, got "
                          f"{type(model).__name__}")


def import_request(name: str, model: Any, task: Optional[str],
                   description: str) -> service_pb2.ImportModelRequest:
    return service_pb2.ImportModelRequest(
        name=name, onnx_model=onnx_bytes(model), description=description,
        task=_convert.choose(_convert.TASKS, task, "task") if task else model_pb2.TASK_UNSPECIFIED)


def export_request(name: str, version: Optional[int],
                   mode: str) -> service_pb2.ExportModelRequest:
    if version is not None and (isinstance(version, bool) or not isinstance(version, int)):
        raise InvalidArgument(f"version must be a version number, got {version!r}")
    return service_pb2.ExportModelRequest(
        name=name, version=version or 0, format=service_pb2.MODEL_FORMAT_ONNX,
        mode=_convert.choose(EXPORT_MODES, mode, "mode"))


def exported(req: service_pb2.ExportModelRequest, resp: service_pb2.ExportModelResponse,
             path: Optional[Union[str, "os.PathLike[str]"]]) -> ExportedModel:
    """The typed answer of ExportModel, its file written to ``path`` when one is given."""
    mode = "train" if req.mode == service_pb2.EXPORT_MODE_TRAIN else "eval"
    out = ExportedModel.from_proto(req.name, mode, resp)
    if path is not None:
        out.save(path)
    return out


def predict_request(model: str, rows: np.ndarray,
                    version: VersionArg) -> service_pb2.PredictRequest:
    return service_pb2.PredictRequest(model=model, inputs=_convert.to_tensor(rows),
                                      version=version_text(version))


def uncertainty_request(model: str, rows: np.ndarray, samples: Optional[int],
                        seed: Optional[int], return_samples: bool, interval: Optional[float],
                        version: VersionArg = None) -> service_pb2.PredictUncertaintyRequest:
    req = service_pb2.PredictUncertaintyRequest(
        model=model, inputs=_convert.to_tensor(rows), samples=samples or 0,
        return_samples=return_samples, interval=interval or 0.0, version=version_text(version))
    if seed is not None:
        req.seed = seed
    return req


def evaluate_request(model: str, data: str, samples: Optional[int], seed: Optional[int],
                     limit: Optional[int], version: VersionArg = None
                     ) -> service_pb2.EvaluateRequest:
    mc = samples is not None
    req = service_pb2.EvaluateRequest(
        model=model, dataset=data, samples=samples or 0, limit=limit or 0,
        version=version_text(version),
        mode=service_pb2.EVAL_MODE_MONTE_CARLO if mc else service_pb2.EVAL_MODE_EVAL)
    if seed is not None:
        if not mc:
            raise InvalidArgument("seed applies to Monte-Carlo evaluation: pass samples= too")
        req.seed = seed
    return req


RANK_CRITERIA = {
    "mutual_information": service_pb2.RANK_CRITERION_MUTUAL_INFORMATION,
    "bald": service_pb2.RANK_CRITERION_MUTUAL_INFORMATION,
    "entropy": service_pb2.RANK_CRITERION_ENTROPY,
    "variation_ratio": service_pb2.RANK_CRITERION_VARIATION_RATIO,
    "margin": service_pb2.RANK_CRITERION_MARGIN,
}


def rank_request(model: str, data: str, by: str, top: int, samples: Optional[int],
                 seed: Optional[int], batch_size: Optional[int], version: VersionArg = None
                 ) -> service_pb2.RankDatasetRequest:
    if by not in RANK_CRITERIA:
        raise InvalidArgument(f"by must be one of {', '.join(sorted(RANK_CRITERIA))}, got {by!r}")
    req = service_pb2.RankDatasetRequest(
        model=model, dataset=data, criterion=RANK_CRITERIA[by], top_k=int(top),
        samples=samples or 0, batch_size=batch_size or 0, version=version_text(version))
    if seed is not None:
        req.seed = seed
    return req


def _int_array(values: Any) -> np.ndarray:
    return np.asarray(values, dtype=np.int64)


def _row_values(values: Any) -> Optional[np.ndarray]:
    return np.asarray(values, dtype=np.float32) if len(values) else None


def prediction(model: str, r: service_pb2.PredictResponse,
               class_names: Optional[Tuple[str, ...]]) -> Prediction:
    outputs = _convert.from_tensor(r.outputs)
    classify = r.task != model_pb2.TASK_REGRESSION
    return Prediction(
        model=model, version=r.version, task=_convert.task_name(r.task),
        outputs=outputs if outputs is not None else np.zeros((0, 0), np.float32),
        predicted_class=_int_array(r.predicted_class) if classify else None,
        variances=_convert.from_tensor(r.variances), class_names=class_names, proto=r)


def uncertainty(model: str, r: service_pb2.PredictUncertaintyResponse,
                class_names: Optional[Tuple[str, ...]]) -> Uncertainty:
    classify = r.task != model_pb2.TASK_REGRESSION
    mean = _convert.from_tensor(r.mean)
    std = _convert.from_tensor(r.stddev)
    empty = np.zeros((0, 0), np.float32)
    lower, upper = _convert.from_tensor(r.lower), _convert.from_tensor(r.upper)
    return Uncertainty(
        model=model, version=r.version, task=_convert.task_name(r.task),
        num_samples=r.num_samples, seed=r.seed,
        mean=mean if mean is not None else empty, std=std if std is not None else empty,
        predicted_class=_int_array(r.predicted_class) if classify else None,
        entropy=_row_values(r.predictive_entropy) if classify else None,
        expected_entropy=_row_values(r.expected_entropy) if classify else None,
        mutual_information=_row_values(r.mutual_information) if classify else None,
        variation_ratio=_row_values(r.variation_ratio) if classify else None,
        total_variance=_convert.from_tensor(r.total_variance),
        interval=(lower, upper) if lower is not None and upper is not None else None,
        samples=_convert.from_tensor(r.samples), class_names=class_names if classify else None,
        proto=r)


def target_from_env(target: Optional[str]) -> str:
    return target or os.environ.get("DROPNET_SERVER") or DEFAULT_TARGET


def token_from_env(token: Optional[str]) -> Optional[str]:
    if token is not None:
        return token or None
    return os.environ.get("DROPNET_TOKEN") or None


def class_names_of(datasets: Sequence[service_pb2.DatasetInfo], name: Optional[str]
                   ) -> Optional[Tuple[str, ...]]:
    for d in datasets:
        if d.name == name and d.class_names:
            return tuple(d.class_names)
    return None


def stream_result(event: Union[service_pb2.RankEvent, service_pb2.EvaluateEvent],
                  progress: Optional[Any]) -> Any:
    """One event of a RankDataset or EvaluateStream stream: a progress event goes to
    ``progress(rows_done, rows_total)``; the result (the last event) is returned, None for the
    others."""
    if event.HasField("progress") and progress is not None:
        progress(event.progress.rows_done, event.progress.rows_total)
    return event.result if event.HasField("result") else None


def evaluation(model: str, data: str, result: Optional[service_pb2.EvaluateResponse]
               ) -> Evaluation:
    """The Evaluation of an EvaluateStream stream's result; an error when the stream ended
    without."""
    if result is None:
        raise DropnetError(f"EvaluateStream of {data!r} ended without a result")
    return Evaluation.from_proto(model, result)


def ranking(model: str, data: str, result: Optional[service_pb2.RankResult]) -> Ranking:
    """The Ranking of a RankDataset stream's result; an error when the stream ended without."""
    if result is None:
        raise DropnetError(f"RankDataset of {data!r} ended without a result")
    return Ranking.from_proto(model, data, result)
