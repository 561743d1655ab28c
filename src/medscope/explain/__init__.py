"""Heat maps of what a trained classifier looks at (Grad-CAM, Grad-CAM++, occlusion)."""

from medscope.explain.files import explain_files, report_gradcam
from medscope.explain.gradcam import METHODS, heatmap, overlay_png, target_layer
from medscope.explain.tiles import tile_overlay

__all__ = ["METHODS", "explain_files", "heatmap", "overlay_png", "report_gradcam",
           "target_layer", "tile_overlay"]
