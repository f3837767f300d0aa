"""The progress display of ``train(..., progress=True)``: a tqdm bar when python3-tqdm is
installed (tqdm.auto: a widget in notebooks), else one line per epoch on stderr."""

from __future__ import annotations

import math
import sys
from typing import Any, Optional

from dropnet.types import TrainEpoch, TrainEvent, TrainFinished, TrainStarted


def _fmt(v: float) -> str:
    return f"{v:.4f}"


class Progress:
    def __init__(self, model: str, metric_name: str) -> None:
        self._model = model
        self._metric = metric_name
        self._bar: Any = None
        self._done = 0
        try:
            from tqdm.auto import tqdm
            self._tqdm: Optional[Any] = tqdm
        except ImportError:
            self._tqdm = None

    def update(self, event: TrainEvent) -> None:
        if isinstance(event, TrainStarted):
            if self._tqdm is not None:
                self._bar = self._tqdm(total=event.total_steps, desc=f"train {self._model}",
                                       unit="step", dynamic_ncols=True)
            return
        postfix = {"epoch": f"{event.epoch}/{event.epochs}", "loss": _fmt(event.loss),
                   self._metric: _fmt(event.metric)}
        if not math.isnan(event.val_loss) and isinstance(event, (TrainEpoch, TrainFinished)):
            postfix["val_loss"] = _fmt(event.val_loss)
            postfix["val_" + self._metric] = _fmt(event.val_metric)
        if self._bar is not None:
            if event.step > self._done:
                self._bar.update(event.step - self._done)
                self._done = event.step
            self._bar.set_postfix(postfix, refresh=True)
        elif isinstance(event, TrainEpoch):
            text = " ".join(f"{k} {v}" for k, v in postfix.items())
            print(f"{self._model}: {text}, version {event.version}", file=sys.stderr, flush=True)
        if isinstance(event, TrainFinished):
            self.close()

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None
