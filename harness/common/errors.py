"""The one exception type users see: a one-line message that names the input and the fix."""


class TokbenchError(Exception):
    """Bad input or an unusable environment; the CLI prints it as one line, no traceback."""
