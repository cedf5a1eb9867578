"""Framework-neutral pieces both model servers share: TF Serving REST protocol, batching, model repository."""
