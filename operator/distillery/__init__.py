"""distillery: a Kubernetes operator that sizes, serves and autoscales distilled models."""

__version__ = "0.1.0"
