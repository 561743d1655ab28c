"""Exported models that run without medscope's training stack (ONNX)."""

from medscope.export.onnx import OnnxPredictor, default_export_dir, export_onnx

__all__ = ["OnnxPredictor", "default_export_dir", "export_onnx"]
