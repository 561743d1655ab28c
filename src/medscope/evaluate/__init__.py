"""Evaluation: metrics, bootstrap confidence intervals, calibration and selective prediction
(summary.evaluation_metrics composes them into metrics.json), and (later) cross-validation and
comparison."""
