"""How an upstream failed, as the clients report it to the remote engine (never to the service).

Whose fault decides what follows (the lesson of SMG #25811: a bad request must never count
against a node): the request's own faults (context too long, an invalid field) are the engine's
typed errors and go to the caller as they are; a full node is EngineOverloadedError (another node
may take the request; nothing counts against it); everything else is a `NodeFailure`.
"""

from __future__ import annotations


class NodeFailure(Exception):
    """A server-side failure of one upstream: refused connection, reset, silence, 5xx, a broken
    stream, or an engine that failed. Before the request's first output another upstream is
    tried; after it the request is lost. `unreachable`: the upstream could not be reached,
    went away or said 503 (cooled down at once, until a good probe); otherwise the failure counts toward `allowed_fails`."""

    def __init__(self, message: str, *, unreachable: bool = False):
        super().__init__(message)
        self.unreachable = unreachable
