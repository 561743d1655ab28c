"""Diagnosis of whole images: readers for micrographs and whole-slide images, the tissue
finder, tiling at the model's scale with the artifact filter of ``medscope patches``, streaming
of tile batches, aggregation of tile probabilities into the image call and its refer rule.

Model-agnostic: the model comes in as a callable ``classify(batch) -> probabilities``. The
modules are imported one by one (``medscope.slides.diagnose`` …); this package imports
nothing at import time, so ``evaluate`` can use ``slides.aggregate`` without loading readers.
"""
