"""One exception family. The CLI turns any OdeltError into a one-line message and exit code 1;
anything else is a bug in odelt and stays a traceback."""


class OdeltError(Exception):
    """A user-facing error: bad input, a missing artifact, a mismatch the user can fix."""


class ConfigError(OdeltError):
    """A model, export or command-line value that cannot be used (out of range, wrong type)."""


class CheckpointError(OdeltError):
    """A checkpoint that cannot be read or does not match its config."""


class ExportError(OdeltError):
    """A graph that could not be exported or does not match PyTorch."""


class BundleError(OdeltError):
    """A bundle folder that is missing, malformed, modified, or does not fit the request (no such graph or engine)."""


class BuildError(OdeltError):
    """An engine that could not be built (TensorRT parse or build failure, ONNX Runtime optimisation)."""


class WriteError(OdeltError):
    """A file or folder that could not be written (read-only folder, full disk, no permission)."""


class ScheduleError(OdeltError):
    """A schedule artifact that is invalid or does not fit the model/bundle."""


class RuntimeFailure(OdeltError):
    """A failure while sampling (non-finite state, missing backend)."""


class EngineMismatch(RuntimeFailure):
    """An engine built for another TensorRT version or GPU than this machine's."""


class BudgetError(OdeltError):
    """No candidate plan fits the latency budget."""


class AccuracyError(OdeltError):
    """A result outside its tolerance."""


class BackendUnavailable(OdeltError):
    """An optional backend (TensorRT, CUDA) is not installed on this machine."""


def first_line(e: BaseException) -> str:
    """The first non-empty line of an exception's message ("" when it has none): what a one-line
    error quotes of a foreign library's exception."""
    text = str(e).strip()
    return text.splitlines()[0] if text else ""
