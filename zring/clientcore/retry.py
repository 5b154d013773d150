"""The retry policy of both clients, as redis-py's ``Retry``: a backoff and a number of tries.

A request met with silence is resent (Lazy Pirate: the same request id and write stamp, to
the next endpoint) up to ``retries`` more times, waiting ``backoff.compute(n)`` seconds
before retry ``n``. A reply is never retried here: the cluster answered, and another node
would not answer otherwise (the routing table decides the few exceptions: a node that left
or whose clock is off).
"""

from __future__ import annotations

from zring.errors import InvalidRequest

__all__ = ["ExponentialBackoff", "NoBackoff", "Retry"]


class ExponentialBackoff:
    """``base * 2 ** (n - 1)`` seconds before retry ``n`` (1, 2, ...), at most ``cap``."""

    __slots__ = ("base", "cap")

    def __init__(self, base: float = 0.05, cap: float = 1.0) -> None:
        self.base, self.cap = base, cap

    def compute(self, failures: int) -> float:
        return min(self.base * 2 ** (failures - 1), self.cap)

    def __repr__(self) -> str:
        return f"ExponentialBackoff(base={self.base}, cap={self.cap})"


class NoBackoff(ExponentialBackoff):
    """Retry at once (tests; sources of the ring, which are tried one after another)."""

    def __init__(self) -> None:
        super().__init__(0.0, 0.0)


class Retry:
    """``retries`` resends after silence, each after ``backoff``; ``attempts`` in all."""

    __slots__ = ("backoff", "retries")

    def __init__(self, retries: int, backoff: ExponentialBackoff | None = None) -> None:
        if type(retries) is not int or retries < 0:
            raise InvalidRequest(f"retries must be an int >= 0, got {retries!r}")
        self.retries = retries
        self.backoff = backoff or ExponentialBackoff()

    @property
    def attempts(self) -> int:
        return self.retries + 1

    def delay(self, attempt: int) -> float:
        """Seconds to wait before ``attempt`` (0: the first send, at once)."""
        return self.backoff.compute(attempt) if attempt else 0.0

    def with_retries(self, retries: int | None) -> Retry:
        """This policy with another number of retries (None: this one)."""
        return self if retries is None or retries == self.retries else \
            Retry(retries, self.backoff)

    def __repr__(self) -> str:
        return f"Retry({self.retries}, {self.backoff!r})"
