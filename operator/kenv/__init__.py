"""kenv: Azure ML-style Environments for any Kubernetes cluster."""

__version__ = "0.1.0"
