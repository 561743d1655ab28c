"""The served model: a FastAPI JSON API and a single static page (``medscope serve``)."""

from medscope.serve.app import ServedModel, create_app, load_models, serve

__all__ = ["ServedModel", "create_app", "load_models", "serve"]
