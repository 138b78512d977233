"""Errors that carry a message meant for the user: the CLI prints it as one line and exits non-zero."""


class MedMambaError(Exception):
    pass


class DataError(MedMambaError, ValueError):
    """Data that cannot be found, read or trusted."""


class CheckpointError(MedMambaError, ValueError):
    """A checkpoint that cannot be read, or does not fit the model."""


class TrainingError(MedMambaError, RuntimeError):
    """Training that cannot go on (non-finite loss, an output folder that must not be overwritten...)."""


class ConfigError(MedMambaError, ValueError):
    """A configuration key that does not exist or holds a value it does not allow."""


class ModelError(MedMambaError, ValueError):
    """A model name, or a selective-scan backend, that cannot be built or run here."""
