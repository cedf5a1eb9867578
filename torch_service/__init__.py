"""FastAPI server for the TorchScript model, speaking TF Serving's REST API and the Open Inference Protocol."""

__version__ = "0.1.0"
