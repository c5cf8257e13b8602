"""Errors that carry a one-line message meant for the user (the CLI prints it and exits with 2)."""

from __future__ import annotations


class InputError(ValueError):
    """Bad input: a file that cannot be read, data that do not fit together, a value out of range.

    The message is one line that names the file (where there is one) and the problem.
    """

    def __init__(self, message: str, *, path: object | None = None) -> None:
        text = f"{path}: {message}" if path is not None else message
        super().__init__(" ".join(str(text).split()))
        self.path = path
