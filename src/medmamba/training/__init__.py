"""Training: the Trainer and its parts (loss, warnings monitor, metrics log), optimiser and schedule,
cross-validation."""
