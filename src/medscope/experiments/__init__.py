"""Recipes: studies as lists of experiments (``recipe``), run and compared (``runner``)."""
