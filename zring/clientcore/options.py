"""Seeds and argument checks: a request with a bad argument fails before anything is sent."""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator, Mapping

from zring.errors import InvalidRequest

__all__ = ["DEFAULT_SEEDS", "SEEDS_ENV", "Seeds", "check_count", "check_key", "check_keys",
           "check_text", "check_value", "check_weight", "client_options", "mput_pairs",
           "parse_seeds", "seeds_from_env"]

DEFAULT_SEEDS: tuple[str, ...] = ("tcp://127.0.0.1:7001", "tcp://127.0.0.1:7002",
                                  "tcp://127.0.0.1:7003")
SEEDS_ENV = "ZRING_SEEDS"


def parse_seeds(seeds: str | Iterable[str]) -> list[str]:
    """``"tcp://a:1, b:2"`` or a list -> endpoints; ``host:port`` gets ``tcp://``."""
    items = seeds.split(",") if isinstance(seeds, str) else list(seeds)
    endpoints = []
    for item in items:
        if not isinstance(item, str):
            raise InvalidRequest(f"a seed must be a str endpoint, got {item!r}")
        item = item.strip()
        if item:
            endpoints.append(item if "://" in item else f"tcp://{item}")
    return endpoints


def seeds_from_env(environ: Mapping[str, str] | None = None) -> list[str]:
    """Seeds from ``$ZRING_SEEDS``, else the local cluster (127.0.0.1:7001..7003)."""
    value = (os.environ if environ is None else environ).get(SEEDS_ENV, "")
    return parse_seeds(value) or list(DEFAULT_SEEDS)


def client_options(seeds: object, timeout: object, retries: object):
    """Checked (seeds, timeout, retries) of a Client or AsyncClient."""
    seeds = seeds_from_env() if seeds is None else parse_seeds(seeds)
    if not seeds:
        raise InvalidRequest("no seed endpoints given")
    if isinstance(timeout, bool) or not isinstance(timeout, (int, float)) or timeout <= 0:
        raise InvalidRequest(f"timeout must be a positive number, got {timeout!r}")
    if type(retries) is not int or retries < 0:
        raise InvalidRequest(f"retries must be an int >= 0, got {retries!r}")
    return seeds, float(timeout), retries


class Seeds:
    """The seed endpoints and the one requests about the cluster go to now. A client
    stays with a seed while it answers and moves on when it is silent or leaves."""

    __slots__ = ("endpoints", "index")

    def __init__(self, endpoints: list[str], index: int) -> None:
        self.endpoints = endpoints
        self.index = index   # a random start spreads clients over the seeds

    @property
    def current(self) -> str:
        return self.endpoints[self.index]

    def move_off(self, endpoint: str) -> None:
        """``endpoint`` went silent (or leaves): the next seed, unless we already moved."""
        if self.endpoints[self.index] == endpoint:
            self.index = (self.index + 1) % len(self.endpoints)

    def from_current(self) -> list[str]:
        """The seeds, the current one first."""
        return self.endpoints[self.index:] + self.endpoints[:self.index]


def check_key(key: object) -> str:
    if not isinstance(key, str):
        raise InvalidRequest(f"key must be a str, got {type(key).__name__}")
    return key


def check_value(value: object) -> bytes | str:
    if not isinstance(value, (bytes, str)):
        raise InvalidRequest(f"value must be bytes or str, got {type(value).__name__}")
    return value


def check_count(value: object, name: str) -> int | None:
    if value is not None and (type(value) is not int):
        raise InvalidRequest(f"{name} must be an int or None, got {type(value).__name__}")
    return value


def check_text(value: object, name: str) -> str:
    if not isinstance(value, str):
        raise InvalidRequest(f"{name} must be a str, got {type(value).__name__}")
    return value


def check_weight(weight: object) -> float | None:
    if weight is not None and (isinstance(weight, bool) or not isinstance(weight, (int, float))):
        raise InvalidRequest(f"weight must be a number, got {weight!r}")
    return weight


def check_keys(keys: object) -> list[str]:
    if isinstance(keys, (str, bytes)):
        raise InvalidRequest("mget takes an iterable of keys, not a single key")
    return [check_key(key) for key in keys]


def mput_pairs(items: object) -> Iterator[tuple[object, object]]:
    """mput's ``items`` (a mapping or an iterable of (key, value) pairs) as pairs."""
    if isinstance(items, Mapping):
        yield from items.items()
        return
    if isinstance(items, (str, bytes)) or not isinstance(items, Iterable):
        raise InvalidRequest("mput takes a mapping or an iterable of (key, value) pairs, "
                             f"not {type(items).__name__}")
    for item in items:
        if isinstance(item, (str, bytes)) or not isinstance(item, (tuple, list)) \
                or len(item) != 2:
            raise InvalidRequest(f"an mput item must be a (key, value) pair, got {item!r:.80}")
        yield item[0], item[1]
