"""The model contract of DESIGN.md as constants, so servers, gateway and tests agree by import."""

from __future__ import annotations

from typing import Any

MODEL_NAME = "cnn"
SIGNATURE_NAME = "serving_default"
INPUT_NAME = "images"
INSTANCE_SHAPE = (28, 28, 1)  # NHWC without the batch dimension
# The model's input values (pixels scaled to [0, 1]). Far outside it the network's arithmetic overflows:
# at 3e38 torch answered NaN probabilities (JSON null) and TensorFlow a uniform guess.
INPUT_RANGE = (0.0, 1.0)
NUM_CLASSES = 10
OUTPUT_PROBABILITIES = "probabilities"
OUTPUT_CLASSES = "classes"
OUTPUT_NAMES = (OUTPUT_PROBABILITIES, OUTPUT_CLASSES)
PREDICT_METHOD_NAME = "tensorflow/serving/predict"


def _tensor_info(dtype: str, dims: list[int], name: str) -> dict[str, Any]:
    # TF Serving renders TensorInfo via proto3 JSON: int64 sizes become strings.
    return {
        "dtype": dtype,
        "tensor_shape": {"dim": [{"size": str(d), "name": ""} for d in dims], "unknown_rank": False},
        "name": name,
    }


def signature_def_json() -> dict[str, Any]:
    """`serving_default` as TF Serving's metadata API renders it (SignatureDef in proto3 JSON)."""
    return {
        "inputs": {INPUT_NAME: _tensor_info("DT_FLOAT", [-1, *INSTANCE_SHAPE], f"{SIGNATURE_NAME}_{INPUT_NAME}:0")},
        "outputs": {
            # tf.saved_model.save numbers a signature's outputs in sorted key order: classes first.
            OUTPUT_PROBABILITIES: _tensor_info("DT_FLOAT", [-1, NUM_CLASSES], "StatefulPartitionedCall:1"),
            OUTPUT_CLASSES: _tensor_info("DT_INT64", [-1], "StatefulPartitionedCall:0"),
        },
        "method_name": PREDICT_METHOD_NAME,
        "defaults": {},  # SignatureDef.defaults (TF >= 2.15), printed empty as TF Serving prints it
    }
