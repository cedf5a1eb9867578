"""Input checks before anything is forwarded, identical for both backends.

The parsing itself is `serving_core.tfs_rest` (shared with both model servers), so a client gets the
same 400 message from the gateway as it would from either backend directly.
"""

from __future__ import annotations

import numpy as np
import orjson

from serving_core import contract
from serving_core.tfs_rest import PredictRequest, RequestFormat, parse_predict_body, validate_images

__all__ = ["PredictRequest", "RequestFormat", "encode_predict_body", "from_images", "parse_predict"]


def parse_predict(body: bytes, max_batch_size: int) -> PredictRequest:
    """Body bytes -> validated float32 [N, 28, 28, 1] batch; raises serving_core InvalidArgument.

    Values must lie in the contract's range: a real TF Serving behind the gateway would accept any
    finite value and answer garbage (or NaN) for them, as the compat server does."""
    return parse_predict_body(body, max_batch_size=max_batch_size, value_range=contract.INPUT_RANGE)


def from_images(images: np.ndarray, fmt: RequestFormat = "row") -> PredictRequest:
    """A request the gateway builds itself (classify)."""
    return PredictRequest(fmt, contract.SIGNATURE_NAME, validate_images(images, value_range=contract.INPUT_RANGE))


def encode_predict_body(req: PredictRequest) -> bytes:
    """The TF-Serving REST body for a request the gateway built (row `instances` or columnar `inputs`)."""
    key = "instances" if req.format == "row" else "inputs"
    return orjson.dumps({key: req.images}, option=orjson.OPT_SERIALIZE_NUMPY)
