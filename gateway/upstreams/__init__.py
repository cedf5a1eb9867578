"""Clients for the two backends: REST (torch_service, TF Serving) and gRPC (TF Serving), with replicas."""
