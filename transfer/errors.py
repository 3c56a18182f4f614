"""The one base class of mistakes a user can fix (bad file, bad value, missing data).

Every command line catches ``UserError`` and prints it as one line, ``error: <file>[, line N]: <what is wrong>``,
exiting with 2; anything else is a bug and keeps its traceback. Raise a subclass, never a bare ``ValueError``,
for anything the user typed or supplied.
"""

from __future__ import annotations


class UserError(Exception):
    """A problem in the user's input; ``str()`` is the whole message, naming the file and line where there is one."""


class UsageError(UserError):
    """A command-line value that cannot work (a path that does not exist, a flag out of range)."""
