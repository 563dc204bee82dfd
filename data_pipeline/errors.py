"""The one exception type of the data pipeline.

Every problem with data on disk (a source file that does not decode, a shard
that is missing or truncated, a member without a label) is raised as a
`DataError` whose message names the file and, inside a tar shard, the member,
so that a user can find the broken piece without a debugger.
"""

from __future__ import annotations


class DataError(ValueError):
    """Damaged or inconsistent data; the message names the file (and member)."""
