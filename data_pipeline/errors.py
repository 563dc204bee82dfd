"""The project's expected-error base class, and the data pipeline's error type.

`UserError` is the one base of every *expected* failure a user can cause or fix:
bad data on disk (`DataError`, here), a bad config key (`training.config.ConfigError`),
a diverged run, an unusable checkpoint, a refused SLURM submission. The `bioscale`
command catches it (and only it) and prints its message as one line, exiting with the
class's `exit_code`; anything else is a bug and keeps its traceback. It lives here, at
the bottom of the import ladder, because this package imports nothing from the rest of
bioscale and every other layer may import it.

Every problem with data on disk (a source file that does not decode, a shard
that is missing or truncated, a member without a label) is raised as a
`DataError` whose message names the file and, inside a tar shard, the member,
so that a user can find the broken piece without a debugger.
"""

from __future__ import annotations


class UserError(Exception):
    """An expected failure; the message names the file or key to fix.

    Subclasses keep their own name and their builtin base (ValueError, RuntimeError)
    and may set `exit_code`, the status `bioscale` exits with (1 unless overridden)."""

    exit_code: int = 1


class DataError(UserError, ValueError):
    """Damaged or inconsistent data; the message names the file (and member)."""
