"""The errors fimvision reports to users: each message names the file, row and column and what to do.

Every console script and tool maps them to exit status 2 with one line on stderr (see
:mod:`fimvision.console`); anything else that escapes is an internal error (status 1, traceback).
"""


class FimvisionError(ValueError):
    """Bad user input (data, config or checkpoint). The CLI prints the message and exits with status 2."""


class DataError(FimvisionError):
    """A dataset folder, manifest or image that cannot be used."""


class CheckpointError(FimvisionError):
    """A checkpoint that cannot be read, or does not fit the model or data it is loaded into."""


class ConfigError(FimvisionError):
    """A setting that cannot work: an unknown backbone, a wrong option or value."""


class DivergenceError(FimvisionError):
    """Training produced a non-finite loss: the settings (learning rate, warm-up, clipping) need changing."""


class OutputExistsError(FimvisionError):
    """A result file or folder is already there and was not written over."""
