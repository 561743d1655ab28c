"""Model zoo: ``create_model`` builds any registered or timm architecture."""

from medscope.models.registry import create_model, is_known_model, list_models, register_model

__all__ = ["create_model", "is_known_model", "list_models", "register_model"]
