"""Errors that mean "bad input": the runner prints the message and exits non-zero without writing anything."""


class ReproError(Exception):
    """A user-facing error: the message says what is wrong and what is allowed."""


class DataFileMissing(ReproError):
    pass


class ModelUnavailable(ReproError):
    pass


class CellMismatch(ReproError):
    """The model, method or task does not fit the table or each other."""


class DataFileInvalid(ReproError):
    """A local data file that cannot be read as its task's format: the message names the file, the line and what
    was expected there. Raised while the data loads, before the cell writes anything."""

    def __init__(self, path, line: int | None, problem: str, expected: str):
        self.path, self.line, self.problem, self.expected = str(path), line, problem, expected
        where = f"{path}, line {line}" if line is not None else str(path)
        super().__init__(f"{where}: {problem}; expected {expected}")
