"""Benchmarks of jaxupdate against torch.optim and optax (``python -m benchmarks``)."""
