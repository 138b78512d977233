"""Evaluation: predictions of a model or of saved runs, metrics, bootstrap statistics, calibration, reports."""
