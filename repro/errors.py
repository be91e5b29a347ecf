"""Errors that mean "bad input": the runner prints the message and exits non-zero without writing anything."""


class ReproError(Exception):
    """A user-facing error: the message says what is wrong and what is allowed."""


class DataFileMissing(ReproError):
    pass


class ModelUnavailable(ReproError):
    pass


class CellMismatch(ReproError):
    """The model, method or task does not fit the table or each other."""
