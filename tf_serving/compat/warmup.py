"""Read TF Serving's warm-up file (`assets.extra/tf_serving_warmup_requests`, a TFRecord of PredictionLog)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from serving_core import contract

WARMUP_FILE = Path("assets.extra") / "tf_serving_warmup_requests"


class WarmupError(ValueError):
    """The warm-up file exists but cannot be replayed (TF Serving fails the load in that case too)."""


def read_warmup_requests(path: Path) -> list[np.ndarray]:
    """The `images` batches of every PredictLog in the file; [] when there is no file.

    TF Serving replays each record at load time and fails the version's load if one fails
    (saved_model_warmup_util.cc); this function raises WarmupError for the same records.
    """
    import tensorflow as tf
    from tensorflow_serving.apis import prediction_log_pb2

    path = Path(path)
    if not path.is_file():
        return []
    batches: list[np.ndarray] = []
    try:
        records = [bytes(r.numpy()) for r in tf.data.TFRecordDataset(str(path))]
    except tf.errors.OpError as exc:
        raise WarmupError(f"{path}: not a readable TFRecord file: {exc.message}") from None
    for i, raw in enumerate(records):
        log = prediction_log_pb2.PredictionLog()
        try:
            log.ParseFromString(raw)
        except Exception as exc:
            raise WarmupError(f"{path}: record {i} is not a PredictionLog: {exc}") from None
        kind = log.WhichOneof("log_type")
        if kind != "predict_log":
            # Classify/Regress/MultiInference logs would need those APIs, which this server lacks.
            raise WarmupError(f"{path}: record {i} is a {kind}; only predict_log is supported")
        inputs = log.predict_log.request.inputs
        if contract.INPUT_NAME not in inputs:
            raise WarmupError(f"{path}: record {i} has no input '{contract.INPUT_NAME}'")
        batches.append(tf.make_ndarray(inputs[contract.INPUT_NAME]).astype(np.float32, copy=False))
    return batches
