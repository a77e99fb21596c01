"""One exception family. The CLI turns any OdeltError into a one-line message and exit code 1;
anything else is a bug in odelt and stays a traceback."""


class OdeltError(Exception):
    """A user-facing error: bad input, a missing artifact, a mismatch the user can fix."""


class ConfigError(OdeltError):
    """A model or export configuration that cannot be built."""


class CheckpointError(OdeltError):
    """A checkpoint that cannot be read or does not match its config."""


class ExportError(OdeltError):
    """A graph that could not be exported or does not match PyTorch."""


class BundleError(OdeltError):
    """A bundle folder that is missing, malformed, modified, or cannot be written."""


class ScheduleError(OdeltError):
    """A schedule artifact that is invalid or does not fit the model/bundle."""


class RuntimeFailure(OdeltError):
    """A failure while sampling (non-finite state, missing backend)."""


class AccuracyError(OdeltError):
    """A result outside its tolerance."""


class BackendUnavailable(OdeltError):
    """An optional backend (TensorRT, CUDA) is not installed on this machine."""
