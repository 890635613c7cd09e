"""The failures seq_mnist reports as one line and a non-zero exit."""


class ConfigError(SystemExit):
    """A bad setting, file or checkpoint: exits with its message."""

    def __init__(self, message):
        super().__init__(f"seq_mnist: error: {message}")
