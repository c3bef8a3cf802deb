"""The errors fimvision reports to users: each message names the file, row and column and what to do."""


class FimvisionError(ValueError):
    """Bad user input (data, config or checkpoint). The CLI prints the message and exits with status 2."""


class DataError(FimvisionError):
    """A dataset folder, manifest or image that cannot be used."""


class CheckpointError(FimvisionError):
    """A checkpoint that does not fit the model or data it is loaded into."""
