"""FastAPI server for the TorchScript model, speaking TF Serving's REST API and the Open Inference Protocol."""
