"""Trains the CNN in PyTorch and publishes it as TorchScript and as a TensorFlow SavedModel."""
