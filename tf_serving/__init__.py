"""TensorFlow Serving configuration, and a TF-Serving-compatible server (`tf_serving.compat`)
for machines without Docker."""
