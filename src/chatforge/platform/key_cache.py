"""A short-lived cache of looked-up API keys, so a busy gateway does not ask the database on every
request. A key is trusted for `ttl_s` after its lookup: a key revoked in the database is refused
by every gateway within that time (expiry is checked on every request, from the cached record).
Unknown keys are never cached, so a key just created works at once everywhere.

Entries are held by the SHA-256 of the key, never the key itself, and the oldest go first past
`max_entries`.
"""

from __future__ import annotations

import hashlib
import time
from collections import OrderedDict

from chatforge.platform.keys import ApiKey


class KeyCache:
    def __init__(self, ttl_s: float, max_entries: int = 10_000):
        self.ttl_s = ttl_s
        self.max_entries = max_entries
        self._entries: OrderedDict[bytes, tuple[float, ApiKey]] = OrderedDict()

    def get(self, api_key: str) -> ApiKey | None:
        digest = hashlib.sha256(api_key.encode()).digest()
        entry = self._entries.get(digest)
        if entry is None:
            return None
        until, key = entry
        if time.monotonic() >= until:
            del self._entries[digest]
            return None
        return key

    def put(self, api_key: str, key: ApiKey) -> None:
        digest = hashlib.sha256(api_key.encode()).digest()
        self._entries[digest] = (time.monotonic() + self.ttl_s, key)
        self._entries.move_to_end(digest)
        while len(self._entries) > self.max_entries:
            self._entries.popitem(last=False)
