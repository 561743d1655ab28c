"""medscope: train, compare, validate and deploy CNN classifiers for medical images."""
__version__ = "0.1.0"
