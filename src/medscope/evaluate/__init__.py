"""Evaluation: metrics, and (later) calibration, cross-validation and comparison."""
