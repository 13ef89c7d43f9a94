"""One-line error messages: what the package reports to users is a single line, whatever the
library underneath raised."""

from __future__ import annotations


def first_line(exc: BaseException) -> str:
    """The first line of an exception's message, or its type name when it has none."""
    text = " ".join(str(a) for a in exc.args).strip() if exc.args else ""
    return text.splitlines()[0] if text else type(exc).__name__
