"""A TF-Serving-compatible server for machines without Docker: TF Serving's REST and gRPC APIs over the
same config files and SavedModels, run by the real TensorFlow runtime. NOT TensorFlow Serving."""
