"""The failures seq_mnist reports as one line and a non-zero exit.

Each is a SystemExit carrying "seq_mnist: error: ...", so the program ends
with that line and status 1 instead of a traceback.
"""


class RunError(SystemExit):
    """A failure the user can act on; `message` is without the prefix."""

    def __init__(self, message):
        super().__init__(f"seq_mnist: error: {message}")
        self.message = message


class ConfigError(RunError):
    """A flag, a combination of flags or a preset that cannot be used."""


class CheckpointError(RunError):
    """A checkpoint that is missing, corrupt, incomplete or for another model."""


class OutputError(RunError):
    """The run directory or a file in it cannot be created or written."""


class DivergedError(RunError):
    """The loss or the evaluation became non-finite: the run is not usable."""
