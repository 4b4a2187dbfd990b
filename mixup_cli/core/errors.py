"""The library's own exception types.

Only the command line turns these into messages and exit codes: data and
runtime problems exit 1, usage problems (a bad option value) exit 2.
"""


class MixupError(Exception):
    """A problem with the data or the run: the message is shown as is."""

    exit_code = 1


class InputError(MixupError):
    """An input file cannot be used (missing, unreadable, wrong keys, bad shapes)."""


class OutputError(MixupError):
    """The output cannot be written where it was asked for."""


class ParameterError(MixupError):
    """An option has a value the tool cannot use; ``option`` names it."""

    exit_code = 2

    def __init__(self, message: str, option: str | None = None):
        super().__init__(message)
        self.option = option
