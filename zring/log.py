"""structlog setup: JSON lines (default for nodes) or console, with the node id bound."""

from __future__ import annotations

import logging
import sys

import structlog

__all__ = ["FailureStreak", "configure_logging"]


def configure_logging(level: str = "info", fmt: str = "json", stream=None) -> None:
    renderer = (structlog.processors.JSONRenderer() if fmt == "json"
                else structlog.dev.ConsoleRenderer(colors=False))
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.format_exc_info,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(
            logging.getLevelNamesMapping()[level.upper()]),
        logger_factory=structlog.PrintLoggerFactory(stream or sys.stderr),
        cache_logger_on_first_use=True,
    )


class FailureStreak:
    """A failure that repeats until something recovers (a full disk fails every loop cycle,
    thousands of times a second): its first occurrence logged as ``<name>_failed``, then a
    count at most every ``summary_s`` as ``<name>_still_failing``, then ``<name>_recovered``
    with the total. ``now`` is any clock in seconds, passed in."""

    def __init__(self, log, name: str, summary_s: float = 5.0) -> None:
        self.log = log
        self.name = name
        self.summary_s = summary_s
        self.since: float | None = None      # when the streak began (None: no failure)
        self.last_at = 0.0                   # the latest failure
        self._failures = self._logged = 0
        self._logged_at = 0.0

    def failed(self, now: float, **fields) -> None:
        self._failures += 1
        self.last_at = now
        if self.since is None:
            self.since = now
            self.log.error(f"{self.name}_failed", **fields)
        elif now - self._logged_at < self.summary_s:
            return
        else:
            self.log.error(f"{self.name}_still_failing", failures=self._failures - self._logged,
                           failing_s=round(now - self.since, 1), **fields)
        self._logged = self._failures
        self._logged_at = now

    def recovered(self, now: float) -> None:
        if self.since is None:
            return
        self.log.info(f"{self.name}_recovered", failures=self._failures,
                      failed_s=round(now - self.since, 1))
        self.since = None
        self._failures = self._logged = 0
