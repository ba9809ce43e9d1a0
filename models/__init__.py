"""PyTorch architectures and their builders (the names and params they take are in spec.architectures)."""

from models.registry import BUILDERS, build_model

__all__ = ["BUILDERS", "build_model"]
