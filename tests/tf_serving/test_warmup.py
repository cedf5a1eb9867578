"""Reading the trainer's warm-up file the way TF Serving replays it."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from tf_serving.compat.warmup import WARMUP_FILE, WarmupError, read_warmup_requests


def test_reads_the_trainers_warmup_file(model_repository: Path) -> None:
    batches = read_warmup_requests(model_repository / "tensorflow" / "cnn" / "1" / WARMUP_FILE)
    assert [b.shape[0] for b in batches] == [1, 8, 32]
    assert all(b.shape[1:] == (28, 28, 1) and b.dtype == np.float32 for b in batches)


def test_missing_file_means_no_warmup(tmp_path: Path) -> None:
    assert read_warmup_requests(tmp_path / "nope") == []


def test_garbage_fails(tmp_path: Path) -> None:
    bad = tmp_path / "tf_serving_warmup_requests"
    bad.write_bytes(b"this is not a tfrecord file at all")
    with pytest.raises(WarmupError):
        read_warmup_requests(bad)


def test_non_predict_logs_are_rejected(tmp_path: Path) -> None:
    import tensorflow as tf
    from tensorflow_serving.apis import prediction_log_pb2

    path = tmp_path / "w"
    with tf.io.TFRecordWriter(str(path)) as w:
        log = prediction_log_pb2.PredictionLog()
        log.classify_log.request.model_spec.name = "cnn"
        w.write(log.SerializeToString())
    with pytest.raises(WarmupError, match="only predict_log"):
        read_warmup_requests(path)
