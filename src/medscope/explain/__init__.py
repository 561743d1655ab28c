"""Heat maps of what a trained classifier looks at (Grad-CAM, Grad-CAM++, occlusion)."""

from medscope.explain.gradcam import METHODS, heatmap, overlay_png, target_layer

__all__ = ["METHODS", "heatmap", "overlay_png", "target_layer"]
