"""Logging set-up: one line per event, never prompt or completion text unless asked for."""

from __future__ import annotations

import logging


def configure_logging(level: str = "info") -> None:
    logging.basicConfig(
        level=level.upper(),
        format="%(asctime)s %(levelname)s %(name)s %(message)s",
    )
    # A gateway's calls to its upstreams (every probe, every request) are not events worth a line.
    logging.getLogger("httpx").setLevel(logging.WARNING)
