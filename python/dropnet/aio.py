"""The asyncio client, :class:`AsyncClient`: the methods of :class:`dropnet.Client` as
coroutines over grpc.aio, and :class:`AsyncTraining`, an async iterator of training events."""

from __future__ import annotations

import os
from typing import Any, AsyncIterator, Awaitable, Callable, Dict, List, Optional, Sequence, Tuple, TypeVar
from typing import Union

import grpc
import grpc.aio
import numpy as np

from dropnet import _common, _convert
from dropnet._common import TLSArg
from dropnet._progress import Progress
from dropnet.client import ArrayLike, OnnxArg, Spec
from dropnet.errors import DropnetError, from_rpc_error
from dropnet.types import (DatasetInfo, DatasetSplit, Evaluation, ExportedModel, ModelInfo,
                           Prediction, Ranking, TrainEvent, TrainFinished, Uncertainty)
from dropnet.v1 import model_pb2, service_pb2, service_pb2_grpc

__all__ = ["AsyncClient", "AsyncTraining"]

T = TypeVar("T")


async def _call(awaitable: Awaitable[T]) -> T:
    try:
        return await awaitable
    except grpc.RpcError as e:
        raise from_rpc_error(e) from None


async def _read_stream(call: Any, progress: Optional[Callable[[int, int], None]]) -> Any:
    """Reads a RankDataset or EvaluateStream call to its end: progress events go to
    ``progress(rows_done, rows_total)``; returns the result event's payload (None without one)."""
    result = None
    try:
        async for event in call:
            got = _common.stream_result(event, progress)
            result = got if got is not None else result
    except grpc.RpcError as e:
        raise from_rpc_error(e) from None
    finally:
        call.cancel()
    return result


class AsyncTraining(AsyncIterator[TrainEvent]):
    """A running ``Train`` call: ``async for event in run``, or ``await run.wait()``."""

    def __init__(self, call: Any, model: str, progress: Optional[Progress]) -> None:
        self._call = call
        self._stream = call.__aiter__()
        self.model = model
        self._progress = progress
        self.last: Optional[TrainEvent] = None
        self.finished: Optional[TrainFinished] = None

    def __aiter__(self) -> "AsyncTraining":
        return self

    async def __anext__(self) -> TrainEvent:
        try:
            message = await self._stream.__anext__()
        except StopAsyncIteration:
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

    async def wait(self) -> TrainFinished:
        """Reads the run to its end and returns its last event."""
        async for _ in self:
            pass
        if self.finished is None:
            raise DropnetError(f"the training of '{self.model}' ended without a finished event")
        return self.finished

    def cancel(self) -> None:
        """Cancels the call: the server keeps the last published version."""
        self._call.cancel()
        self._close()

    def _close(self) -> None:
        if self._progress is not None:
            self._progress.close()


class AsyncClient:
    """:class:`dropnet.Client` for asyncio: the same arguments, every method a coroutine
    (``train`` returns an :class:`AsyncTraining` at once). ``async with`` closes it."""

    def __init__(self, target: Optional[str] = None, *, token: Optional[str] = None,
                 tls: TLSArg = False, timeout: Optional[float] = 30.0,
                 max_message_bytes: int = 64 << 20, max_attempts: int = 4,
                 options: Sequence[Tuple[str, Any]] = ()) -> None:
        self.target = _common.target_from_env(target)
        self.timeout = timeout
        creds, opts = _common.channel_settings(tls, max_message_bytes, max_attempts, options)
        self._channel = (grpc.aio.secure_channel(self.target, creds, options=opts) if creds
                         else grpc.aio.insecure_channel(self.target, options=opts))
        self._metadata = _common.metadata(_common.token_from_env(token))
        self._stub = service_pb2_grpc.DropnetStub(self._channel)
        self._health = self._channel.unary_unary(
            _common.HEALTH_CHECK, request_serializer=_common.encode_health_request,
            response_deserializer=_common.decode_health_response)
        self._meta: Dict[str, _common.ModelMeta] = {}
        self._class_names: Dict[Tuple[str, int], Optional[Tuple[str, ...]]] = {}

    async def close(self) -> None:
        await self._channel.close()

    async def __aenter__(self) -> "AsyncClient":
        return self

    async def __aexit__(self, *exc: Any) -> None:
        await self.close()

    def __repr__(self) -> str:
        return f"AsyncClient({self.target!r})"

    def _kw(self, timeout: Any = "default") -> Dict[str, Any]:
        return {"timeout": self.timeout if timeout == "default" else timeout,
                "metadata": self._metadata}

    async def health(self, service: str = "") -> bool:
        return await _call(self._health(service, **self._kw())) == _common.SERVING

    async def create_model(self, name: str, spec: Spec, *, serving_label: Optional[str] = None,
                           keep_versions: Optional[int] = None) -> ModelInfo:
        req = _common.create_request(name, spec, serving_label, keep_versions)
        info = (await _call(self._stub.CreateModel(req, **self._kw()))).model
        self._meta[name] = _common.model_meta(info)
        return ModelInfo.from_proto(info)

    async def get_model(self, name: str) -> ModelInfo:
        return ModelInfo.from_proto(await self._get_model(name))

    async def list_models(self, *, page_size: int = 0) -> List[ModelInfo]:
        out: List[ModelInfo] = []
        token = ""
        while True:
            req = _common.list_models_request(page_size, token)
            resp = await _call(self._stub.ListModels(req, **self._kw()))
            out.extend(ModelInfo.from_proto(m) for m in resp.models)
            token = resp.next_page_token
            if not token:
                return out

    async def set_label(self, model: str, label: str, version: int) -> ModelInfo:
        req = service_pb2.SetVersionLabelRequest(model=model, label=label, version=version)
        info = (await _call(self._stub.SetVersionLabel(req, **self._kw()))).model
        self._meta[model] = _common.model_meta(info)
        return ModelInfo.from_proto(info)

    async def remove_label(self, model: str, label: str) -> ModelInfo:
        req = service_pb2.RemoveVersionLabelRequest(model=model, label=label)
        info = (await _call(self._stub.RemoveVersionLabel(req, **self._kw()))).model
        self._meta[model] = _common.model_meta(info)
        return ModelInfo.from_proto(info)

    async def update_model(self, model: str, *, serving_label: Optional[str] = None,
                           keep_versions: Optional[int] = None) -> ModelInfo:
        req = _common.update_request(model, serving_label, keep_versions)
        info = (await _call(self._stub.UpdateModel(req, **self._kw()))).model
        self._meta[model] = _common.model_meta(info)
        return ModelInfo.from_proto(info)

    async def versions(self, name: str) -> List[int]:
        return list((await self._get_model(name)).versions)

    async def delete_model(self, name: str) -> None:
        await _call(self._stub.DeleteModel(service_pb2.DeleteModelRequest(name=name),
                                           **self._kw()))
        self._meta.pop(name, None)
        for key in [k for k in self._class_names if k[0] == name]:
            del self._class_names[key]

    async def import_model(self, name: str, onnx_model: OnnxArg, *,
                           task: Optional[str] = None, description: str = "") -> ModelInfo:
        """See :meth:`dropnet.Client.import_model`."""
        req = _common.import_request(name, onnx_model, task, description)
        info = (await _call(self._stub.ImportModel(req, **self._kw()))).model
        self._meta[name] = _common.model_meta(info)
        return ModelInfo.from_proto(info)

    async def export_model(self, name: str,
                           path: Optional[Union[str, "os.PathLike[str]"]] = None, *,
                           version: Optional[int] = None, mode: str = "eval") -> ExportedModel:
        """See :meth:`dropnet.Client.export_model`."""
        req = _common.export_request(name, version, mode)
        resp = await _call(self._stub.ExportModel(req, **self._kw()))
        return _common.exported(req, resp, path)

    async def upload(self, name: str, X: Union[ArrayLike, str, "os.PathLike[str]"],
                     y: Optional[Union[ArrayLike, str]] = None, *, task: str = "classification",
                     target: Optional[str] = None, input_shape: Optional[Sequence[int]] = None,
                     overwrite: bool = False, rows_per_chunk: int = 4096,
                     timeout: Optional[float] = None) -> DatasetInfo:
        messages = _common.upload_messages(name, X, y, task, target, input_shape, overwrite,
                                           rows_per_chunk)
        resp = await _call(self._stub.UploadDataset(messages, timeout=timeout,
                                                    metadata=self._metadata))
        return DatasetInfo.from_proto(resp.dataset)

    async def import_dataset(self, name: str, path: str, labels: Optional[str] = None, *,
                             task: str = "classification", target: Optional[str] = None,
                             overwrite: bool = False, limit: Optional[int] = None) -> DatasetInfo:
        req = service_pb2.ImportDatasetRequest(
            name=name, path=path, label_path=labels or "", target_column=target or "",
            task=_convert.choose(_convert.TASKS, task, "task"), overwrite=overwrite,
            limit=limit or 0)
        resp = await _call(self._stub.ImportDataset(req, **self._kw(None)))
        return DatasetInfo.from_proto(resp.dataset)

    async def list_datasets(self) -> List[DatasetInfo]:
        return [DatasetInfo.from_proto(d) for d in await self._datasets()]

    async def split_dataset(self, name: str, fractions: Sequence[float] = (0.8, 0.2), *,
                            seed: int = 0, names: Optional[Sequence[str]] = None,
                            overwrite: bool = False,
                            timeout: Optional[float] = None) -> DatasetSplit:
        """As :meth:`dropnet.Client.split_dataset`."""
        req = service_pb2.SplitDatasetRequest(
            name=name, fractions=[float(f) for f in fractions], seed=seed,
            output_names=list(names or ()), overwrite=overwrite)
        resp = await _call(self._stub.SplitDataset(req, **self._kw(timeout)))
        return DatasetSplit.from_proto(resp)

    async def delete_dataset(self, name: str) -> None:
        await _call(self._stub.DeleteDataset(service_pb2.DeleteDatasetRequest(name=name),
                                             **self._kw()))

    async def train(self, model: str, data: str, *, epochs: int = 10, batch_size: int = 128,
                    optimizer: str = "adam", learning_rate: float = 0.0,
                    momentum: Optional[float] = None, nesterov: bool = False,
                    weight_decay: float = 0.0, max_norm: float = 0.0,
                    validation_split: float = 0.0, early_stopping_patience: int = 0,
                    seed: int = 0, schedule: str = "constant", schedule_step_epochs: int = 0,
                    schedule_gamma: float = 0.0, standardize: bool = False,
                    report_every_steps: Optional[int] = None, progress: bool = False,
                    timeout: Optional[float] = None) -> AsyncTraining:
        """Starts a run; see :meth:`dropnet.Client.train`."""
        if report_every_steps is None:
            report_every_steps = 10 if progress else 0
        req = _common.train_request(
            model, data, epochs, batch_size, optimizer, learning_rate, momentum, nesterov,
            weight_decay, max_norm, validation_split, early_stopping_patience, seed, schedule,
            schedule_step_epochs, schedule_gamma, standardize, report_every_steps)
        bar = None
        if progress:
            task = (await self._get_model(model)).spec.task
            bar = Progress(model, "rmse" if task == model_pb2.TASK_REGRESSION else "acc")
        call = self._stub.Train(req, timeout=timeout, metadata=self._metadata)
        self._meta.pop(model, None)
        return AsyncTraining(call, model, bar)

    async def predict(self, model: str, X: ArrayLike, *,
                      version: Optional[Union[int, str]] = None) -> Prediction:
        rows = await self._rows(model, X)
        req = _common.predict_request(model, rows, version)
        resp = await _call(self._stub.Predict(req, **self._kw()))
        classify = resp.task != model_pb2.TASK_REGRESSION
        names = await self._names(model, resp.version) if classify else None
        return _common.prediction(model, resp, names)

    async def uncertainty(self, model: str, X: ArrayLike, *, samples: Optional[int] = None,
                          seed: Optional[int] = None, return_samples: bool = False,
                          interval: Optional[float] = None,
                          version: Optional[Union[int, str]] = None) -> Uncertainty:
        rows = await self._rows(model, X)
        req = _common.uncertainty_request(model, rows, samples, seed, return_samples, interval,
                                          version)
        resp = await _call(self._stub.PredictUncertainty(req, **self._kw()))
        classify = resp.task != model_pb2.TASK_REGRESSION
        names = await self._names(model, resp.version) if classify else None
        return _common.uncertainty(model, resp, names)

    async def evaluate(self, model: str, data: str, *, samples: Optional[int] = None,
                       seed: Optional[int] = None, limit: Optional[int] = None,
                       version: Optional[Union[int, str]] = None,
                       progress: Optional[Callable[[int, int], None]] = None,
                       timeout: Optional[float] = None) -> Evaluation:
        """As :meth:`dropnet.Client.evaluate`."""
        req = _common.evaluate_request(model, data, samples, seed, limit, version)
        if progress is None:
            resp = await _call(self._stub.Evaluate(req, **self._kw(timeout)))
            return Evaluation.from_proto(model, resp)
        call = self._stub.EvaluateStream(req, **self._kw(timeout))
        result = await _read_stream(call, progress)
        return _common.evaluation(model, data, result)

    async def rank(self, model: str, data: str, *, by: str = "mutual_information", top: int,
                   samples: Optional[int] = None, seed: Optional[int] = None,
                   batch_size: Optional[int] = None, version: Optional[Union[int, str]] = None,
                   progress: Optional[Callable[[int, int], None]] = None,
                   timeout: Optional[float] = None) -> Ranking:
        """As :meth:`dropnet.Client.rank`."""
        req = _common.rank_request(model, data, by, top, samples, seed, batch_size, version)
        call = self._stub.RankDataset(req, timeout=timeout, metadata=self._metadata)
        result = await _read_stream(call, progress)
        return _common.ranking(model, data, result)

    async def _get_model(self, name: str) -> service_pb2.ModelInfo:
        resp = await _call(self._stub.GetModel(service_pb2.GetModelRequest(name=name),
                                               **self._kw()))
        self._meta[name] = _common.model_meta(resp.model)
        return resp.model

    async def _rows(self, model: str, X: ArrayLike) -> np.ndarray:
        if model not in self._meta:
            await self._get_model(model)
        try:
            return _convert.as_batch(X, self._meta[model].input_shape, model)[0]
        except DropnetError:
            await self._get_model(model)
            return _convert.as_batch(X, self._meta[model].input_shape, model)[0]

    async def _datasets(self) -> List[service_pb2.DatasetInfo]:
        resp = await _call(self._stub.ListDatasets(service_pb2.ListDatasetsRequest(),
                                                   **self._kw()))
        return list(resp.datasets)

    async def _names(self, model: str, version: int) -> Optional[Tuple[str, ...]]:
        key = (model, version)
        if key not in self._class_names:
            meta = self._meta.get(model)
            if meta is None or meta.version < version:
                await self._get_model(model)
                meta = self._meta[model]
            dataset = _common.dataset_for_version(meta, version)
            names = _common.class_names_of(await self._datasets(), dataset) if dataset else None
            self._class_names[key] = names
        return self._class_names[key]
