"""The wire protocols torch_service speaks: TF Serving's REST API (v1) and the Open Inference Protocol (v2)."""
