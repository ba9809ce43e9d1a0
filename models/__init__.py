"""Neural-network architectures and their registry. Imports nothing else of this project."""

from models.registry import ARCHITECTURES, Architecture, InputShape, build_model

__all__ = ["ARCHITECTURES", "Architecture", "InputShape", "build_model"]
