"""The blocking client, :class:`Client`, and a training run, :class:`Training`."""

from __future__ import annotations

import os
from typing import Any, Callable, Dict, Iterator, List, Mapping, Optional, Sequence, Tuple, TypeVar
from typing import Union

import grpc
import numpy as np

from dropnet import _common, _convert
from dropnet._common import TLS, TLSArg
from dropnet._progress import Progress
from dropnet.errors import DropnetError, from_rpc_error
from dropnet.types import (DatasetInfo, DatasetSplit, Evaluation, ExportedModel, ModelInfo,
                           Prediction, Ranking, TrainEvent, TrainFinished, Uncertainty)
from dropnet.v1 import model_pb2, service_pb2, service_pb2_grpc

__all__ = ["Client", "Training", "TLS"]

T = TypeVar("T")
ArrayLike = Any  # numpy array, nested lists, pandas DataFrame
Spec = Union[Mapping[str, Any], str, "os.PathLike[str]", model_pb2.ModelSpec]
OnnxArg = Any  # bytes, a file's path, or an onnx.ModelProto


def _call(fn: Callable[[], T]) -> T:
    try:
        return fn()
    except grpc.RpcError as e:
        raise from_rpc_error(e) from None


def _read_stream(call: Any, progress: Optional[Callable[[int, int], None]]) -> Any:
    """Reads a RankDataset or EvaluateStream call to its end: progress events go to
    ``progress(rows_done, rows_total)``; returns the result event's payload (None without one)."""
    result = None
    try:
        for event in call:
            got = _common.stream_result(event, progress)
            result = got if got is not None else result
    except grpc.RpcError as e:
        raise from_rpc_error(e) from None
    finally:
        call.cancel()
    return result


class Training(Iterator[TrainEvent]):
    """A running ``Train`` call: iterate it for its events (:class:`TrainStarted`, then
    :class:`TrainStep` and :class:`TrainEpoch`, last :class:`TrainFinished`), or call
    :meth:`wait`. The server trains whether or not the events are read; a version is published
    at the end of every epoch. :meth:`cancel` stops the run, and the model keeps its last
    published version."""

    def __init__(self, call: Any, model: str, progress: Optional[Progress]) -> None:
        self._call = call
        self.model = model
        self._progress = progress
        self.last: Optional[TrainEvent] = None
        self.finished: Optional[TrainFinished] = None

    def __iter__(self) -> "Training":
        return self

    def __next__(self) -> TrainEvent:
        try:
            message = next(self._call)
        except StopIteration:
            self._close()
            raise
        except grpc.RpcError as e:
            self._close()
            raise from_rpc_error(e) from None
        event = TrainEvent.from_proto(message)
        self.last = event
        if isinstance(event, TrainFinished):
            self.finished = event
        if self._progress is not None:
            self._progress.update(event)
        return event

    def wait(self) -> TrainFinished:
        """Reads the run to its end and returns its last event (the version published)."""
        for _ in self:
            pass
        if self.finished is None:
            raise DropnetError(f"the training of '{self.model}' ended without a finished event")
        return self.finished

    def cancel(self) -> None:
        """Cancels the call: the server stops between steps and keeps the last version."""
        self._call.cancel()
        self._close()

    def _close(self) -> None:
        if self._progress is not None:
            self._progress.close()

    def __repr__(self) -> str:
        return f"Training(model={self.model!r}, last={self.last!r})"


class Client:
    """A connection to a dropnet server.

    ``target`` is host:port (default ``$DROPNET_SERVER`` or 127.0.0.1:50051); ``token`` a bearer
    token (default ``$DROPNET_TOKEN``), sent as ``authorization: Bearer <token>``; ``tls`` is
    False (plaintext), True (TLS, the system's CA roots), a CA file's path, or a :class:`TLS`
    with a CA and a client certificate. ``timeout`` (seconds) bounds every call but ``train``
    and ``upload``. UNAVAILABLE is retried with backoff up to ``max_attempts`` times.

    Every failed call raises a :class:`dropnet.DropnetError` subclass named after its status
    code. Use it as a context manager, or call :meth:`close`.

    >>> client = dropnet.Client("127.0.0.1:50051")
    >>> client.uncertainty("digits", X[:5], samples=100, seed=1)
    """

    def __init__(self, target: Optional[str] = None, *, token: Optional[str] = None,
                 tls: TLSArg = False, timeout: Optional[float] = 30.0,
                 max_message_bytes: int = 64 << 20, max_attempts: int = 4,
                 options: Sequence[Tuple[str, Any]] = ()) -> None:
        self.target = _common.target_from_env(target)
        self.timeout = timeout
        creds, opts = _common.channel_settings(tls, max_message_bytes, max_attempts, options)
        self._channel = (grpc.secure_channel(self.target, creds, options=opts) if creds
                         else grpc.insecure_channel(self.target, options=opts))
        self._metadata = _common.metadata(_common.token_from_env(token))
        self._stub = service_pb2_grpc.DropnetStub(self._channel)
        self._health = self._channel.unary_unary(
            _common.HEALTH_CHECK, request_serializer=_common.encode_health_request,
            response_deserializer=_common.decode_health_response)
        self._meta: Dict[str, _common.ModelMeta] = {}
        self._class_names: Dict[Tuple[str, int], Optional[Tuple[str, ...]]] = {}

    # ---- connection ----

    def close(self) -> None:
        """Closes the channel; calls in flight are cancelled."""
        self._channel.close()

    def __enter__(self) -> "Client":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"Client({self.target!r})"

    def _kw(self, timeout: Any = "default") -> Dict[str, Any]:
        return {"timeout": self.timeout if timeout == "default" else timeout,
                "metadata": self._metadata}

    def health(self, service: str = "") -> bool:
        """True when the server (or the named service) is SERVING (grpc.health.v1)."""
        return _call(lambda: self._health(service, **self._kw())) == _common.SERVING

    # ---- models ----

    def create_model(self, name: str, spec: Spec, *, serving_label: Optional[str] = None,
                     keep_versions: Optional[int] = None) -> ModelInfo:
        """Creates a model at version 1 from its spec: a dict in the JSON mapping of ModelSpec
        (``{"inputShape": [64], "layers": [{"type": "dense", "units": 128}, ...]}``; snake_case
        keys work too), a JSON file such as ``examples/digits_mlp.json``, or a ModelSpec.
        ``serving_label`` (e.g. ``"stable"``, given to version 1): calls without a version are
        answered by the version it names, so training changes nothing served until a version is
        promoted with :meth:`set_label`. ``keep_versions``: newest versions kept (default: the
        server's, 5; labelled versions and the best by validation metric are kept too)."""
        req = _common.create_request(name, spec, serving_label, keep_versions)
        info = _call(lambda: self._stub.CreateModel(req, **self._kw())).model
        self._remember(info)
        return ModelInfo.from_proto(info)

    def get_model(self, name: str) -> ModelInfo:
        """The model's spec, versions and training history."""
        return ModelInfo.from_proto(self._get_model(name))

    def list_models(self, *, page_size: int = 0) -> List[ModelInfo]:
        """Every model, sorted by name (read in pages of ``page_size``, default the server's)."""
        out: List[ModelInfo] = []
        token = ""
        while True:
            req = _common.list_models_request(page_size, token)
            resp = _call(lambda: self._stub.ListModels(req, **self._kw()))
            out.extend(ModelInfo.from_proto(m) for m in resp.models)
            token = resp.next_page_token
            if not token:
                return out

    def versions(self, name: str) -> List[int]:
        """The model's stored versions, oldest first (the last is the newest)."""
        return list(self._get_model(name).versions)

    def set_label(self, model: str, label: str, version: int) -> ModelInfo:
        """Points ``label`` (``"stable"``, ``"canary"``, any name starting with a letter) at
        ``version``; moving the serving label promotes or rolls back what the model serves."""
        req = service_pb2.SetVersionLabelRequest(model=model, label=label, version=version)
        info = _call(lambda: self._stub.SetVersionLabel(req, **self._kw())).model
        self._remember(info)
        return ModelInfo.from_proto(info)

    def remove_label(self, model: str, label: str) -> ModelInfo:
        """Removes a label (not the serving label: FailedPrecondition)."""
        req = service_pb2.RemoveVersionLabelRequest(model=model, label=label)
        info = _call(lambda: self._stub.RemoveVersionLabel(req, **self._kw())).model
        self._remember(info)
        return ModelInfo.from_proto(info)

    def update_model(self, model: str, *, serving_label: Optional[str] = None,
                     keep_versions: Optional[int] = None) -> ModelInfo:
        """Changes the serving label (``""``: serve the newest) and/or the retention."""
        req = _common.update_request(model, serving_label, keep_versions)
        info = _call(lambda: self._stub.UpdateModel(req, **self._kw())).model
        self._remember(info)
        return ModelInfo.from_proto(info)

    def delete_model(self, name: str) -> None:
        """Deletes the model and all its versions (FailedPrecondition while it trains)."""
        _call(lambda: self._stub.DeleteModel(service_pb2.DeleteModelRequest(name=name),
                                             **self._kw()))
        self._forget(name)

    def import_model(self, name: str, onnx_model: OnnxArg, *, task: Optional[str] = None,
                     description: str = "") -> ModelInfo:
        """Creates model ``name`` (version 1) from an ONNX file: its bytes, its path or an
        ``onnx.ModelProto``. A sequential graph as ``torch.onnx.export`` writes it (export in
        ``TrainingMode.TRAINING`` without constant folding to keep the Dropout nodes, which
        become dropout layers: the model's ``stochastic`` is then True). ``task``: "classification"
        or "regression" (default: what the file says, else classification when it ends in a
        softmax). A node dropnet cannot map raises InvalidArgument naming it; a file over the
        server's ``--max-model-bytes`` ResourceExhausted."""
        req = _common.import_request(name, onnx_model, task, description)
        info = _call(lambda: self._stub.ImportModel(req, **self._kw())).model
        self._remember(info)
        return ModelInfo.from_proto(info)

    def export_model(self, name: str, path: Optional[Union[str, "os.PathLike[str]"]] = None, *,
                     version: Optional[int] = None, mode: str = "eval") -> ExportedModel:
        """A version (default: the one served) as an ONNX file (opset 13), also written to
        ``path`` when given. ``mode="train"`` gives its Dropout nodes ``training_mode = true``
        and raises FailedPrecondition for a layer whose randomness ONNX cannot express; "eval"
        writes such layers in their eval form and lists them in ``warnings``."""
        req = _common.export_request(name, version, mode)
        resp = _call(lambda: self._stub.ExportModel(req, **self._kw()))
        return _common.exported(req, resp, path)

    # ---- data sets ----

    def upload(self, name: str, X: Union[ArrayLike, str, "os.PathLike[str]"],
               y: Optional[Union[ArrayLike, str]] = None, *, task: str = "classification",
               target: Optional[str] = None, input_shape: Optional[Sequence[int]] = None,
               overwrite: bool = False, rows_per_chunk: int = 4096,
               timeout: Optional[float] = None) -> DatasetInfo:
        """Stores a data set on the server, streamed in chunks.

        ``X`` is a CSV file's path (a header row; the target is the last column unless
        ``target`` names it), a pandas DataFrame (with ``y`` as labels, or ``y``/``target``
        naming its label column), or rows (an array or lists, [rows, ...]; each row's shape is
        ``input_shape``, default ``X.shape[1:]``) with their labels ``y``. Classification labels
        are class indices 0..K-1, or strings (the classes are then named after them, sorted);
        ``task="regression"`` for real-valued targets. ``overwrite`` replaces a data set of the
        same name (else AlreadyExists)."""
        messages = _common.upload_messages(name, X, y, task, target, input_shape, overwrite,
                                           rows_per_chunk)
        resp = _call(lambda: self._stub.UploadDataset(messages, timeout=timeout,
                                                      metadata=self._metadata))
        return DatasetInfo.from_proto(resp.dataset)

    def import_dataset(self, name: str, path: str, labels: Optional[str] = None, *,
                       task: str = "classification", target: Optional[str] = None,
                       overwrite: bool = False, limit: Optional[int] = None) -> DatasetInfo:
        """Has the server read a CSV file, or IDX images with their ``labels`` file, under its
        ``--data-root`` (paths relative to it)."""
        req = service_pb2.ImportDatasetRequest(
            name=name, path=path, label_path=labels or "", target_column=target or "",
            task=_convert.choose(_convert.TASKS, task, "task"), overwrite=overwrite,
            limit=limit or 0)
        resp = _call(lambda: self._stub.ImportDataset(req, **self._kw(None)))
        return DatasetInfo.from_proto(resp.dataset)

    def list_datasets(self) -> List[DatasetInfo]:
        """Every stored data set, sorted by name."""
        return [DatasetInfo.from_proto(d) for d in self._datasets()]

    def split_dataset(self, name: str, fractions: Sequence[float] = (0.8, 0.2), *,
                      seed: int = 0, names: Optional[Sequence[str]] = None,
                      overwrite: bool = False, timeout: Optional[float] = None) -> DatasetSplit:
        """Cuts the stored data set ``name`` into new ones, one per fraction (two or more, summing
        to 1): part i gets about ``fractions[i]`` of the rows, shuffled by ``seed`` (the same
        seed gives the same parts), classification rows stratified. ``names`` default to
        NAME-train and NAME-test for two fractions (NAME-train, NAME-validation, NAME-test for
        three; NAME-1 ... NAME-k for more); ``overwrite`` replaces data sets of those names (else
        AlreadyExists, nothing written). Bad fractions are InvalidArgument."""
        req = service_pb2.SplitDatasetRequest(
            name=name, fractions=[float(f) for f in fractions], seed=seed,
            output_names=list(names or ()), overwrite=overwrite)
        resp = _call(lambda: self._stub.SplitDataset(req, **self._kw(timeout)))
        return DatasetSplit.from_proto(resp)

    def delete_dataset(self, name: str) -> None:
        _call(lambda: self._stub.DeleteDataset(service_pb2.DeleteDatasetRequest(name=name),
                                               **self._kw()))

    # ---- training ----

    def train(self, model: str, data: str, *, epochs: int = 10, batch_size: int = 128,
              optimizer: str = "adam", learning_rate: float = 0.0,
              momentum: Optional[float] = None, nesterov: bool = False,
              weight_decay: float = 0.0, max_norm: float = 0.0, validation_split: float = 0.0,
              early_stopping_patience: int = 0, seed: int = 0, schedule: str = "constant",
              schedule_step_epochs: int = 0, schedule_gamma: float = 0.0,
              standardize: bool = False, report_every_steps: Optional[int] = None,
              progress: bool = False, timeout: Optional[float] = None) -> Training:
        """Starts training ``model`` on the stored data set ``data`` and returns the run: iterate
        it for typed events, or ``.wait()`` for the last. ``progress=True`` draws a progress bar
        (tqdm when installed) as the events are read. Defaults are the server's: Adam at 0.001
        (SGD 0.01), batch 128, no validation split. ``standardize`` fits per-feature scaling on
        the training rows, applied to every later call. ``report_every_steps`` sends step
        events (default: epochs only, or every 10 steps with ``progress``)."""
        if report_every_steps is None:
            report_every_steps = 10 if progress else 0
        req = _common.train_request(
            model, data, epochs, batch_size, optimizer, learning_rate, momentum, nesterov,
            weight_decay, max_norm, validation_split, early_stopping_patience, seed, schedule,
            schedule_step_epochs, schedule_gamma, standardize, report_every_steps)
        bar = None
        if progress:
            task = self._get_model(model).spec.task
            bar = Progress(model, "rmse" if task == model_pb2.TASK_REGRESSION else "acc")
        call = _call(lambda: self._stub.Train(req, timeout=timeout, metadata=self._metadata))
        self._meta.pop(model, None)
        return Training(call, model, bar)

    # ---- prediction ----

    def predict(self, model: str, X: ArrayLike, *,
                version: Optional[Union[int, str]] = None) -> Prediction:
        """Eval-mode (deterministic) answers for a batch [rows, ...] or a single row, in any
        shape whose per-row size matches the model's input (float64 and lists are converted).
        ``version``: a number, a label (``"stable"``) or None for the model's default; the
        answer's ``version`` says which computed it."""
        rows, _ = self._rows(model, X)
        req = _common.predict_request(model, rows, version)
        resp = _call(lambda: self._stub.Predict(req, **self._kw()))
        names = self._names(model, resp.version) if resp.task != model_pb2.TASK_REGRESSION else None
        return _common.prediction(model, resp, names)

    def uncertainty(self, model: str, X: ArrayLike, *, samples: Optional[int] = None,
                    seed: Optional[int] = None, return_samples: bool = False,
                    interval: Optional[float] = None,
                    version: Optional[Union[int, str]] = None) -> Uncertainty:
        """Monte-Carlo dropout: ``samples`` stochastic passes (default the server's, 50) over
        each row of ``X``; the same ``seed`` and ``version`` give the same answer (no seed: the
        server picks one and returns it). ``return_samples`` keeps every pass's outputs;
        ``interval`` is the mass of the regression interval (default 0.95). See
        :class:`dropnet.Uncertainty`."""
        rows, _ = self._rows(model, X)
        req = _common.uncertainty_request(model, rows, samples, seed, return_samples, interval,
                                          version)
        resp = _call(lambda: self._stub.PredictUncertainty(req, **self._kw()))
        names = self._names(model, resp.version) if resp.task != model_pb2.TASK_REGRESSION else None
        return _common.uncertainty(model, resp, names)

    def evaluate(self, model: str, data: str, *, samples: Optional[int] = None,
                 seed: Optional[int] = None, limit: Optional[int] = None,
                 version: Optional[Union[int, str]] = None,
                 progress: Optional[Callable[[int, int], None]] = None,
                 timeout: Optional[float] = None) -> Evaluation:
        """Scores ``model`` on the stored labelled data set ``data``: in eval mode, or with
        Monte-Carlo dropout over ``samples`` passes when given. ``limit``: the first rows only;
        ``version``: as for :meth:`predict`. With ``progress``, the call is EvaluateStream and
        ``progress(rows_done, rows_total)`` is called after every batch the server scores (the
        answer is the same, bit for bit). ``timeout`` (seconds, default none) bounds the call."""
        req = _common.evaluate_request(model, data, samples, seed, limit, version)
        if progress is None:
            resp = _call(lambda: self._stub.Evaluate(req, **self._kw(timeout)))
            return Evaluation.from_proto(model, resp)
        call = _call(lambda: self._stub.EvaluateStream(req, **self._kw(timeout)))
        result = _read_stream(call, progress)
        return _common.evaluation(model, data, result)

    def rank(self, model: str, data: str, *, by: str = "mutual_information", top: int,
             samples: Optional[int] = None, seed: Optional[int] = None,
             batch_size: Optional[int] = None, version: Optional[Union[int, str]] = None,
             progress: Optional[Callable[[int, int], None]] = None,
             timeout: Optional[float] = None) -> Ranking:
        """Which rows of the stored data set ``data`` to label next: Monte-Carlo dropout over
        every row (``samples`` passes, default the server's 50) and the ``top`` rows by ``by``
        (``"mutual_information"``, alias ``"bald"``; ``"entropy"``; ``"variation_ratio"``:
        highest first; ``"margin"``: smallest first). The data set's labels are not read.
        ``progress(rows_done, rows_total)`` is called as the server works; ``timeout`` (seconds,
        default none) bounds the call. A row's score is PredictUncertainty's for that row with
        the same seed, whatever ``batch_size`` (rows per batch, default 256). See
        :class:`dropnet.Ranking`."""
        req = _common.rank_request(model, data, by, top, samples, seed, batch_size, version)
        call = _call(lambda: self._stub.RankDataset(req, timeout=timeout,
                                                    metadata=self._metadata))
        result = _read_stream(call, progress)
        return _common.ranking(model, data, result)

    # ---- what the client remembers of models ----

    def _get_model(self, name: str) -> service_pb2.ModelInfo:
        info = _call(lambda: self._stub.GetModel(service_pb2.GetModelRequest(name=name),
                                                 **self._kw())).model
        self._remember(info)
        return info

    def _remember(self, info: service_pb2.ModelInfo) -> None:
        self._meta[info.name] = _common.model_meta(info)

    def _forget(self, name: str) -> None:
        self._meta.pop(name, None)
        for key in [k for k in self._class_names if k[0] == name]:
            del self._class_names[key]

    def _rows(self, model: str, X: ArrayLike) -> Tuple[np.ndarray, bool]:
        meta = self._meta.get(model)
        if meta is None:
            self._get_model(model)
            meta = self._meta[model]
        try:
            return _convert.as_batch(X, meta.input_shape, model)
        except DropnetError:
            # The model may have been replaced under the same name: ask again once.
            self._get_model(model)
            return _convert.as_batch(X, self._meta[model].input_shape, model)

    def _datasets(self) -> List[service_pb2.DatasetInfo]:
        resp = _call(lambda: self._stub.ListDatasets(service_pb2.ListDatasetsRequest(),
                                                     **self._kw()))
        return list(resp.datasets)

    def _names(self, model: str, version: int) -> Optional[Tuple[str, ...]]:
        key = (model, version)
        if key not in self._class_names:
            meta = self._meta.get(model)
            if meta is None or meta.version < version:
                self._get_model(model)
                meta = self._meta[model]
            dataset = _common.dataset_for_version(meta, version)
            names = _common.class_names_of(self._datasets(), dataset) if dataset else None
            self._class_names[key] = names
        return self._class_names[key]
