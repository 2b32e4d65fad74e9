"""The one error type the command line turns into a one-line message (exit 2): what the user must fix.

Anything else that escapes a command is a bug in nmtq or in a dependency and keeps its traceback. ``NmtqError``
is a ``ValueError``, so code that catches ``ValueError`` around nmtq's calls keeps working.

Example:
    >>> try:
    ...     raise NmtqError("--num_beams 0: pass at least 1")
    ... except ValueError as err:
    ...     print(err)
    --num_beams 0: pass at least 1
"""

from __future__ import annotations


class NmtqError(ValueError):
    """A user error whose message says what was wrong and how to fix it, in one line."""
