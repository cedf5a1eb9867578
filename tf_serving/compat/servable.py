"""One loaded SavedModel version: the `serving_default` ConcreteFunction, its SignatureDefs, warm-up."""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from serving_core import contract
from serving_core.errors import FailedPrecondition
from serving_core.repository import MANIFEST_FILE, verify_manifest
from tf_serving.compat.warmup import WARMUP_FILE, read_warmup_requests

log = logging.getLogger(__name__)

SERVE_TAG = "serve"


def read_signature_defs(version_dir: Path) -> dict[str, Any]:
    """The `serve` MetaGraph's SignatureDef protos, keyed by name, straight from saved_model.pb."""
    from tensorflow.core.protobuf import saved_model_pb2

    sm = saved_model_pb2.SavedModel()
    sm.ParseFromString((Path(version_dir) / "saved_model.pb").read_bytes())
    for mg in sm.meta_graphs:
        if SERVE_TAG in mg.meta_info_def.tags:
            return dict(mg.signature_def)
    raise FailedPrecondition(f"SavedModel in {version_dir} has no MetaGraph tagged '{SERVE_TAG}'")


def signature_defs_json(signature_defs: dict[str, Any]) -> dict[str, Any]:
    """SignatureDefs in proto3 JSON as TF Serving prints them (field names kept, defaults printed)."""
    from google.protobuf.json_format import MessageToDict

    return {
        name: MessageToDict(sig, preserving_proto_field_name=True, always_print_fields_with_no_presence=True)
        for name, sig in signature_defs.items()
    }


@dataclass
class SavedModelServable:
    """A SavedModel version held in memory; `run` is thread-safe (TF functions are)."""

    version: int
    path: Path
    signature_defs: dict[str, Any]
    signature_json: dict[str, Any]
    output_dtypes: dict[str, str]
    _fn: Any
    _module: Any  # keeps the variables alive as long as the function
    warmup_batches: int = 0
    load_seconds: float = 0.0
    manifest: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def load(cls, path: Path, version: int, *, warmup: bool = True, verify: bool = True) -> SavedModelServable:
        import tensorflow as tf

        t0 = time.perf_counter()
        path = Path(path)
        manifest: dict[str, Any] = {}
        if verify and (path / MANIFEST_FILE).exists():
            # Torn or tampered files fail the load (and the old version keeps serving).
            manifest = verify_manifest(path)
        sig_defs = read_signature_defs(path)
        if contract.SIGNATURE_NAME not in sig_defs:
            raise FailedPrecondition(f"SavedModel in {path} has no '{contract.SIGNATURE_NAME}' signature")
        sig = sig_defs[contract.SIGNATURE_NAME]
        missing = [n for n in (contract.INPUT_NAME,) if n not in sig.inputs] + [
            n for n in contract.OUTPUT_NAMES if n not in sig.outputs
        ]
        if missing:
            raise FailedPrecondition(f"'{contract.SIGNATURE_NAME}' of {path} lacks tensors {missing}")
        module = tf.saved_model.load(str(path), tags=[SERVE_TAG])
        fn = module.signatures[contract.SIGNATURE_NAME]
        servable = cls(
            version=version,
            path=path,
            signature_defs=sig_defs,
            signature_json=signature_defs_json(sig_defs),
            output_dtypes={k: v.dtype for k, v in fn.structured_outputs.items()},
            _fn=fn,
            _module=module,
            manifest=manifest,
        )
        if warmup:
            servable.warm_up()
        servable.load_seconds = time.perf_counter() - t0
        return servable

    def warm_up(self) -> None:
        """Replay the warm-up file like TF Serving's --enable_model_warmup (a failed record fails the load)."""
        batches = read_warmup_requests(self.path / WARMUP_FILE)
        for images in batches:
            self.run(images)
        self.warmup_batches = len(batches)
        log.info("version %d: replayed %d warm-up requests", self.version, len(batches))

    def run(self, images: np.ndarray) -> dict[str, np.ndarray]:
        """Call the signature; the ConcreteFunction has a fixed input signature, so nothing retraces."""
        import tensorflow as tf

        out = self._fn(images=tf.constant(images, dtype=tf.float32))
        return {k: v.numpy() for k, v in out.items()}
