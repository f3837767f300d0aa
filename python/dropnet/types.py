"""What the client returns: models, data sets, training events and prediction results.

Every type is a frozen dataclass built from the server's message, which stays available as
``.proto`` for anything not surfaced here. Arrays are numpy float32, one row per input row.
"""

from __future__ import annotations

import dataclasses
import datetime
import math
from typing import Any, Dict, Iterator, List, Optional, Sequence, Tuple, Union

import numpy as np

from dropnet import _convert
from dropnet.v1 import model_pb2, service_pb2

__all__ = [
    "EpochRecord", "ModelInfo", "DatasetInfo", "DatasetSplit", "TrainEvent", "TrainStarted",
    "TrainStep", "TrainEpoch", "TrainFinished", "Prediction", "Uncertainty", "Evaluation",
    "ExportedModel", "Ranking",
]


def _time(unix_ms: int) -> Optional[datetime.datetime]:
    if not unix_ms:
        return None
    return datetime.datetime.fromtimestamp(unix_ms / 1000, tz=datetime.timezone.utc)


def _field(**kwargs: Any) -> Any:
    return dataclasses.field(repr=False, compare=False, **kwargs)


@dataclasses.dataclass(frozen=True)
class EpochRecord:
    """One finished epoch: the version it published and its scores (metric: accuracy, or RMSE
    for regression; the validation scores are NaN without a validation split)."""

    version: int
    epoch: int
    loss: float
    metric: float
    val_loss: float
    val_metric: float
    samples_per_second: float
    dataset: str

    @classmethod
    def from_proto(cls, r: model_pb2.EpochRecord) -> "EpochRecord":
        return cls(r.version, r.epoch, r.loss, r.metric, r.val_loss, r.val_metric,
                   r.samples_per_second, r.dataset)


@dataclasses.dataclass(frozen=True)
class ModelInfo:
    """A model: its spec (the JSON mapping, as ``create_model`` takes it), the version served now
    (``version``: the serving label's, or the newest), every stored version (``proto`` holds
    each one's labels, status, metrics and size in ``version_details``), its labels, and the
    training history."""

    name: str
    task: str
    input_shape: Tuple[int, ...]
    output_size: int
    parameter_count: int
    version: int
    versions: Tuple[int, ...]
    training: bool
    steps: int
    history: Tuple[EpochRecord, ...]
    learned_rates: Dict[int, float]
    created: Optional[datetime.datetime]
    # Per learned-rate layer index: (min, mean, max) of its rates.
    learned_rate_ranges: Dict[int, Tuple[float, float, float]]
    # Per sparse_vd layer index: the fraction of weights pruned in prediction.
    pruned_fraction: Dict[int, float]
    # Classification: the training data set's class names, in label order (may be empty).
    class_names: Tuple[str, ...]
    # Labels and the versions they name ({"stable": 12}); the label calls without a version
    # are answered from ("": the newest); the newest version; newest versions kept.
    labels: Dict[str, int]
    serving_label: str
    newest_version: int
    keep_versions: int
    # Whether it has a stochastic layer (a dropout of any kind): without one, uncertainty() and
    # Monte-Carlo evaluation answer FailedPrecondition.
    stochastic: bool
    spec: Dict[str, Any] = _field()
    proto: service_pb2.ModelInfo = _field()

    @classmethod
    def from_proto(cls, m: service_pb2.ModelInfo) -> "ModelInfo":
        return cls(
            name=m.name, task=_convert.task_name(m.spec.task),
            input_shape=tuple(m.spec.input_shape), output_size=m.output_size,
            parameter_count=m.parameter_count, version=m.version, versions=tuple(m.versions),
            training=m.training, steps=m.steps,
            history=tuple(EpochRecord.from_proto(r) for r in m.history),
            learned_rates=dict(m.learned_rates), created=_time(m.created_unix_ms),
            learned_rate_ranges={r.layer: (r.min, r.mean, r.max) for r in m.learned_rate_ranges},
            pruned_fraction=dict(m.pruned_fraction), class_names=tuple(m.class_names),
            labels=dict(m.labels), serving_label=m.serving_label,
            newest_version=m.newest_version, keep_versions=m.keep_versions,
            stochastic=m.stochastic, spec=_convert.message_dict(m.spec), proto=m)


@dataclasses.dataclass(frozen=True)
class DatasetInfo:
    """A stored data set (its rows stay on the server)."""

    name: str
    task: str
    rows: int
    input_shape: Tuple[int, ...]
    targets: int
    num_classes: int
    class_names: Tuple[str, ...]
    source: str
    created: Optional[datetime.datetime]
    feature_names: Tuple[str, ...] = _field()
    proto: service_pb2.DatasetInfo = _field()

    @classmethod
    def from_proto(cls, d: service_pb2.DatasetInfo) -> "DatasetInfo":
        return cls(
            name=d.name, task=_convert.task_name(d.task), rows=d.rows,
            input_shape=tuple(d.input_shape), targets=d.targets, num_classes=d.num_classes,
            class_names=tuple(d.class_names), source=d.source, created=_time(d.created_unix_ms),
            feature_names=tuple(d.feature_names), proto=d)


@dataclasses.dataclass(frozen=True)
class DatasetSplit:
    """The data sets a split made (SplitDataset), in the order of its fractions.

    Iterate over it or index it by position or by name: ``split["digits-test"].rows``."""

    datasets: Tuple[DatasetInfo, ...]
    proto: service_pb2.SplitDatasetResponse = _field()

    @classmethod
    def from_proto(cls, r: service_pb2.SplitDatasetResponse) -> "DatasetSplit":
        return cls(datasets=tuple(DatasetInfo.from_proto(d) for d in r.datasets), proto=r)

    @property
    def names(self) -> Tuple[str, ...]:
        return tuple(d.name for d in self.datasets)

    @property
    def rows(self) -> Tuple[int, ...]:
        return tuple(d.rows for d in self.datasets)

    def __len__(self) -> int:
        return len(self.datasets)

    def __iter__(self) -> Iterator[DatasetInfo]:
        return iter(self.datasets)

    def __getitem__(self, key: Union[int, str]) -> DatasetInfo:
        if isinstance(key, str):
            for d in self.datasets:
                if d.name == key:
                    return d
            raise KeyError(f"no data set named {key!r} in this split (it made "
                           f"{', '.join(self.names)})")
        return self.datasets[key]

    def __repr__(self) -> str:
        parts = ", ".join(f"{d.name} ({d.rows} rows)" for d in self.datasets)
        return f"DatasetSplit({parts})"


@dataclasses.dataclass(frozen=True)
class TrainEvent:
    """One event of a training run; see the subclasses for which fields each kind fills.

    ``loss`` and ``metric`` are means over the epoch so far (metric: accuracy, or RMSE for
    regression); ``val_*`` are NaN without a validation split."""

    epoch: int
    epochs: int
    step: int
    total_steps: int
    loss: float
    metric: float
    val_loss: float
    val_metric: float
    samples_per_second: float
    learning_rate: float
    version: int
    early_stopped: bool
    eta_seconds: float
    proto: service_pb2.TrainEvent = _field()

    kind = "unspecified"

    @staticmethod
    def from_proto(e: service_pb2.TrainEvent) -> "TrainEvent":
        cls = _EVENT_KINDS.get(e.kind, TrainEvent)
        return cls(e.epoch, e.epochs, e.step, e.total_steps, e.loss, e.metric, e.val_loss,
                   e.val_metric, e.samples_per_second, e.learning_rate, e.version,
                   e.early_stopped, e.eta_seconds, e)

    def __repr__(self) -> str:
        shown = {
            "started": ("epochs", "total_steps", "learning_rate"),
            "step": ("epoch", "step", "total_steps", "loss", "metric", "eta_seconds"),
            "epoch": ("epoch", "epochs", "version", "loss", "metric", "val_loss", "val_metric"),
            "finished": ("epoch", "version", "loss", "metric", "early_stopped"),
        }.get(self.kind, ("epoch", "step", "version"))
        parts = []
        for name in shown:
            v = getattr(self, name)
            if isinstance(v, float):
                if math.isnan(v):
                    continue
                v = float(f"{v:.4g}")
            parts.append(f"{name}={v}")
        return f"{type(self).__name__}({', '.join(parts)})"


@dataclasses.dataclass(frozen=True, repr=False)
class TrainStarted(TrainEvent):
    """Sent first: the run's plan (epochs, total_steps, learning_rate)."""
    kind = "started"


@dataclasses.dataclass(frozen=True, repr=False)
class TrainStep(TrainEvent):
    """Every ``report_every_steps`` steps: progress within an epoch."""
    kind = "step"


@dataclasses.dataclass(frozen=True, repr=False)
class TrainEpoch(TrainEvent):
    """An epoch ended and published ``version``."""
    kind = "epoch"


@dataclasses.dataclass(frozen=True, repr=False)
class TrainFinished(TrainEvent):
    """Sent last on success; ``version`` is the one served now."""
    kind = "finished"


_EVENT_KINDS = {
    service_pb2.TrainEvent.KIND_STARTED: TrainStarted,
    service_pb2.TrainEvent.KIND_STEP: TrainStep,
    service_pb2.TrainEvent.KIND_EPOCH: TrainEpoch,
    service_pb2.TrainEvent.KIND_FINISHED: TrainFinished,
}


def _format_table(header: Sequence[str], rows: Sequence[Sequence[Any]], total: int) -> str:
    cells = [[str(h) for h in header]] + [[_cell(v) for v in r] for r in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(header))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in cells]
    if total > len(rows):
        lines.append(f"... {total - len(rows)} more rows")
    return "\n".join(lines)


def _cell(v: Any) -> str:
    if isinstance(v, (float, np.floating)):
        return f"{v:.4f}"
    return str(v)


_REPR_ROWS = 10


@dataclasses.dataclass(frozen=True)
class Prediction:
    """Eval-mode (deterministic) answers: ``outputs`` is [rows, classes] probabilities or
    [rows, targets] values; ``predicted_class`` the argmax per row (classification)."""

    model: str
    version: int
    task: str
    outputs: np.ndarray = _field()
    predicted_class: Optional[np.ndarray] = _field()
    variances: Optional[np.ndarray] = _field()
    class_names: Optional[Tuple[str, ...]] = _field(default=None)
    proto: Optional[service_pb2.PredictResponse] = _field(default=None)

    def __repr__(self) -> str:
        head = (f"Prediction(model={self.model!r}, version={self.version}, task={self.task}, "
                f"rows={len(self.outputs)})")
        n = min(len(self.outputs), _REPR_ROWS)
        if self.task == "classification" and self.predicted_class is not None:
            rows = [(i, _label(self.predicted_class[i], self.class_names),
                     self.outputs[i, self.predicted_class[i]]) for i in range(n)]
            return head + "\n" + _format_table(("row", "class", "probability"), rows,
                                               len(self.outputs))
        rows = [(i, *self.outputs[i].tolist()) for i in range(n)]
        header = ("row",) + tuple(f"y{j}" for j in range(self.outputs.shape[1]))
        return head + "\n" + _format_table(header, rows, len(self.outputs))


def _label(k: int, names: Optional[Sequence[str]]) -> Any:
    return names[k] if names and 0 <= k < len(names) else int(k)


@dataclasses.dataclass(frozen=True)
class Uncertainty:
    """Monte-Carlo dropout: ``num_samples`` stochastic passes over every row, their mean and
    spread.

    Both tasks: ``mean`` and ``std`` ([rows, outputs]: mean class probabilities, or mean values,
    and their standard deviation over the passes). Classification, one value per row:
    ``predicted_class`` (argmax of the mean), ``entropy`` (predictive entropy H[mean p], the total
    uncertainty), ``expected_entropy``, ``mutual_information`` (BALD: entropy minus expected
    entropy, what the model does not know) and ``variation_ratio`` (the share of passes that
    disagree with the majority). Regression: ``total_variance`` (sample variance + 1/tau + the
    mean predicted variance) and ``interval`` = (lower, upper), each [rows, targets].
    ``samples`` holds every pass's outputs [T, rows, outputs] when asked for. ``seed`` reproduces
    the answer; ``version`` is the model version that gave it.
    """

    model: str
    version: int
    task: str
    num_samples: int
    seed: int
    mean: np.ndarray = _field()
    std: np.ndarray = _field()
    predicted_class: Optional[np.ndarray] = _field(default=None)
    entropy: Optional[np.ndarray] = _field(default=None)
    expected_entropy: Optional[np.ndarray] = _field(default=None)
    mutual_information: Optional[np.ndarray] = _field(default=None)
    variation_ratio: Optional[np.ndarray] = _field(default=None)
    total_variance: Optional[np.ndarray] = _field(default=None)
    interval: Optional[Tuple[np.ndarray, np.ndarray]] = _field(default=None)
    samples: Optional[np.ndarray] = _field(default=None)
    class_names: Optional[Tuple[str, ...]] = _field(default=None)
    proto: Optional[service_pb2.PredictUncertaintyResponse] = _field(default=None)

    @property
    def probability(self) -> Optional[np.ndarray]:
        """Classification: the mean probability of the predicted class, per row."""
        if self.predicted_class is None:
            return None
        return self.mean[np.arange(len(self.mean)), self.predicted_class]

    @property
    def predicted_label(self) -> Optional[List[Any]]:
        """Classification: the predicted class's name (its index when the data had none)."""
        if self.predicted_class is None:
            return None
        return [_label(k, self.class_names) for k in self.predicted_class.tolist()]

    def _columns(self) -> Dict[str, Any]:
        if self.task == "classification" and self.predicted_class is not None:
            rows = np.arange(len(self.mean))
            return {
                "prediction": self.predicted_label,
                "probability": self.probability,
                "std": self.std[rows, self.predicted_class],
                "entropy": self.entropy,
                "mutual_information": self.mutual_information,
                "variation_ratio": self.variation_ratio,
            }
        cols: Dict[str, Any] = {}
        single = self.mean.shape[1] == 1
        for j in range(self.mean.shape[1]):
            suffix = "" if single else f"_{j}"
            cols["mean" + suffix] = self.mean[:, j]
            cols["std" + suffix] = self.std[:, j]
            if self.interval is not None:
                cols["lower" + suffix] = self.interval[0][:, j]
                cols["upper" + suffix] = self.interval[1][:, j]
        return cols

    def to_pandas(self) -> Any:
        """A pandas DataFrame, one row per input row (needs pandas: python3-pandas)."""
        try:
            import pandas as pd
        except ImportError:
            raise ImportError("to_pandas() needs pandas (apt-get install python3-pandas)") from None
        return pd.DataFrame(self._columns())

    def __len__(self) -> int:
        return len(self.mean)

    def __repr__(self) -> str:
        head = (f"Uncertainty(model={self.model!r}, version={self.version}, task={self.task}, "
                f"rows={len(self.mean)}, samples={self.num_samples}, seed={self.seed})")
        cols = self._columns()
        n = min(len(self.mean), _REPR_ROWS)
        rows = [(i, *(c[i] for c in cols.values())) for i in range(n)]
        return head + "\n" + _format_table(("row",) + tuple(cols), rows, len(self.mean))


@dataclasses.dataclass(frozen=True)
class Evaluation:
    """Scores of a model on a stored, labelled data set. Classification: accuracy, nll, brier,
    ece (15 bins); regression: rmse and log_likelihood (NaN when the model has neither tau nor a
    Gaussian head). ``mode`` is "eval" or "monte_carlo" (then with ``samples`` and ``seed``)."""

    model: str
    version: int
    task: str
    mode: str
    rows: int
    accuracy: float
    nll: float
    brier: float
    ece: float
    rmse: float
    log_likelihood: float
    samples: int
    seed: int
    proto: Optional[service_pb2.EvaluateResponse] = _field(default=None)

    @classmethod
    def from_proto(cls, model: str, r: service_pb2.EvaluateResponse) -> "Evaluation":
        mode = "monte_carlo" if r.mode == service_pb2.EVAL_MODE_MONTE_CARLO else "eval"
        return cls(model, r.version, _convert.task_name(r.task), mode, r.rows, r.accuracy, r.nll,
                   r.brier, r.ece, r.rmse, r.log_likelihood, r.samples, r.seed, r)


@dataclasses.dataclass(frozen=True)
class ExportedModel:
    """A model version written as ONNX (opset 13): ``onnx_model`` the file's bytes (load it with
    ``onnx.load_from_string``, run it in ONNX Runtime, or give it back to ``import_model``),
    ``mode`` "eval" or "train" (the ``training_mode`` of its Dropout nodes), and ``warnings``:
    the layers written in their eval form, one line each."""

    model: str
    version: int
    mode: str
    warnings: Tuple[str, ...]
    onnx_model: bytes = _field()
    proto: service_pb2.ExportModelResponse = _field()

    @classmethod
    def from_proto(cls, model: str, mode: str,
                   r: service_pb2.ExportModelResponse) -> "ExportedModel":
        return cls(model, r.version, mode, tuple(r.warnings), r.onnx_model, r)

    def save(self, path: Any) -> None:
        """Writes the file."""
        with open(path, "wb") as f:
            f.write(self.onnx_model)


@dataclasses.dataclass(frozen=True)
class Ranking:
    """The rows of a stored data set to label next (``Client.rank``): ``indices`` (0-based rows
    of the data set), their ``scores`` under ``criterion`` and their ``predicted_class``, best
    first: highest score first, except ``"margin"`` (top-1 minus top-2 mean probability),
    smallest first. ``rows`` is the data set's size; ``version``, ``samples`` and ``seed``
    reproduce the ranking."""

    model: str
    dataset: str
    criterion: str
    indices: np.ndarray = _field()
    scores: np.ndarray = _field()
    predicted_class: np.ndarray = _field()
    version: int = 0
    samples: int = 0
    seed: int = 0
    rows: int = 0
    batch_size: int = 0
    class_names: Tuple[str, ...] = ()
    proto: Optional[service_pb2.RankResult] = _field(default=None)

    @classmethod
    def from_proto(cls, model: str, dataset: str, r: service_pb2.RankResult) -> "Ranking":
        criterion = service_pb2.RankCriterion.Name(r.criterion)
        criterion = criterion[len("RANK_CRITERION_"):].lower()
        return cls(model, dataset, criterion, np.asarray(r.indices, dtype=np.int64),
                   np.asarray(r.scores, dtype=np.float32),
                   np.asarray(r.predicted_class, dtype=np.int64), r.version, r.samples, r.seed,
                   r.rows, r.batch_size, tuple(r.class_names), r)

    def __len__(self) -> int:
        return len(self.indices)

    def __repr__(self) -> str:
        lines = [f"Ranking of {self.rows} rows of {self.dataset!r} by {self.criterion} "
                 f"(model {self.model!r} version {self.version}, T={self.samples}, "
                 f"seed {self.seed})", f"{'rank':>4}  {'row':>6}  {'score':>8}  prediction"]
        for i, (row, score, k) in enumerate(zip(self.indices[:10], self.scores[:10],
                                                self.predicted_class[:10])):
            name = self.class_names[k] if k < len(self.class_names) else str(k)
            lines.append(f"{i + 1:>4}  {row:>6}  {score:8.4f}  {name}")
        if len(self) > 10:
            lines.append(f"... {len(self) - 10} more")
        return "\n".join(lines)
