"""The one error type of `chatforge bench`: bad options, an unreadable workload file, a server
that cannot be reached or named. The command prints its message and exits non-zero."""

from __future__ import annotations


class BenchError(Exception):
    pass
