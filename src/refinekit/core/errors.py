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


def os_error_text(exc: OSError) -> str:
    """What the system says of ``exc``, in lower case, for a one-line message.

    >>> import errno
    >>> os_error_text(OSError(errno.ENOSPC, "No space left on device"))
    'no space left on device'
    """
    return (exc.strerror or str(exc)).lower()


def error_reason(exc: BaseException) -> str:
    """``exc`` in a few words for a one-line message: the system's words for an OSError (lower case),
    else its text on one line (at most 120 characters), else the name of its type.

    >>> error_reason(ValueError("bad\\n  header"))
    'bad header'
    """
    if isinstance(exc, OSError) and exc.strerror:
        return os_error_text(exc)
    text = " ".join(str(exc).split())
    return text[:120] if text else type(exc).__name__


def first_line(exc: BaseException) -> str:
    """The first line of ``exc``'s text (a parser's message can run to many), else the name of its type.

    >>> first_line(RuntimeError("unknown record\\nat line 3"))
    'unknown record'
    """
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__
