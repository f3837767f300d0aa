"""dropnet: the Python client of the dropnet service, which trains and serves neural networks
with dropout layers and answers with Monte-Carlo dropout uncertainty.

>>> import dropnet
>>> client = dropnet.Client("127.0.0.1:50051")
>>> client.create_model("digits", "examples/digits_mlp.json")
>>> client.upload("digits", "data/digits.csv")
>>> client.train("digits", "digits", epochs=20, standardize=True, progress=True).wait()
>>> u = client.uncertainty("digits", X, samples=100, seed=1)
>>> u.mean, u.std, u.entropy, u.mutual_information, u.variation_ratio

Failed calls raise :class:`DropnetError` subclasses named after the gRPC status code
(:class:`NotFound`, :class:`InvalidArgument`, ...).
"""

from dropnet._common import TLS
from dropnet.aio import AsyncClient, AsyncTraining
from dropnet.client import Client, Training
from dropnet.errors import (Aborted, AlreadyExists, Cancelled, DataLoss, DeadlineExceeded,
                            DropnetError, FailedPrecondition, Internal, InvalidArgument, NotFound,
                            OutOfRange, PermissionDenied, ResourceExhausted, Unauthenticated,
                            Unavailable, Unimplemented, Unknown)
from dropnet.types import (DatasetInfo, DatasetSplit, EpochRecord, Evaluation, ExportedModel,
                           ModelInfo, Prediction, Ranking, TrainEpoch, TrainEvent, TrainFinished,
                           TrainStarted, TrainStep, Uncertainty)

__version__ = "0.1.0"

__all__ = [
    "Client", "AsyncClient", "Training", "AsyncTraining", "TLS",
    "ModelInfo", "DatasetInfo", "DatasetSplit", "EpochRecord", "TrainEvent", "TrainStarted",
    "TrainStep", "TrainEpoch", "TrainFinished", "Prediction", "Uncertainty", "Evaluation",
    "ExportedModel", "Ranking",
    "DropnetError", "Cancelled", "Unknown", "InvalidArgument", "DeadlineExceeded", "NotFound",
    "AlreadyExists", "PermissionDenied", "ResourceExhausted", "FailedPrecondition", "Aborted",
    "OutOfRange", "Unimplemented", "Internal", "Unavailable", "DataLoss", "Unauthenticated",
]
