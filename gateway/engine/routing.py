"""Where a request goes among a model's upstreams: the routing policies, as small pure pieces.

A model's Triton servers come in *groups* (``[[upstream_groups]]``: a node type, a region, a
provider), which the model lists in order of preference. A policy (a :class:`Route`) arranges its
upstreams in *tiers* and says how one is chosen within a tier:

- default (``model``): the groups in the model's order of preference, one tier each;
- ``model:cheapest``: the groups by price (input + output per 1k tokens, unset = 0), the cheapest
  first; groups of equal price share a tier;
- ``model:<group>``: that group alone: it is pinned, the request never leaves it;
- ``model:fastest``: one tier of every upstream, and within it the best recent speed (:class:`Meter`).

A request goes to the first tier that has an upstream *ready* for it: available (healthy, not
ejected), not saturated (``capacity`` requests in flight), not already tried by this request. Within
the tier: the fewest in flight (ties rotate), or by prompt prefix (:class:`PrefixTable`) when the
model routes by prefix, or by speed (``fastest``). When every upstream is saturated, the least loaded
for its capacity; when none is available, any (a wrong health verdict must not take a model down).
A retry before the first token excludes the upstream that failed: it falls to the next server of
the tier, then to the next tier.

Per request this is a scan of a short list. Prefix routing adds one tuple hash and one dict lookup
per block of the prompt (about 20 µs for a 2k-token prompt on the development machine: the figure
is printed by tests/unit/test_routing.py), computed once per request, not per retry.
"""

from __future__ import annotations

import math
import time
from collections import OrderedDict
from collections.abc import Collection, Sequence
from dataclasses import dataclass
from typing import Generic, Protocol, TypeVar

FASTEST = "fastest"
CHEAPEST = "cheapest"
POLICIES = (FASTEST, CHEAPEST)  # with the names of a model's groups: what `model:<policy>` may say

EWMA_WEIGHT = 0.2  # the newest measurement's weight: the last ten or so requests count
FASTEST_TOKENS = 128  # fastest's score: seconds to the first token and this many more
STALE_S = 10.0  # an upstream whose figures are older is given one request to refresh them
PREFIX_ENTRIES = 65_536  # prefix blocks remembered per model (LRU): about 8 MB when full
# prefix routing leaves a prompt's upstream (this request only: the prefix stays its) when that one has
# more in flight than the least loaded one by more than max(SPILL_ABS, SPILL_REL x the least loaded's):
# a few more requests in an in-flight batch are worth a cache hit (a long prefill saved), a server more
# than twice as loaded as its peer is not. (SGLang's router, for comparison, spills at 32 more.) A
# group's ``capacity`` is the hard limit either way. perf/prefix.py at 16 streams over two servers:
# with 4 and 0.5 the spills left TTFT p99 where least in flight has it (x1.05); 8 and 1.0 nearly halve it.
SPILL_ABS = 8
SPILL_REL = 1.0

NO_KEYS: tuple[int, ...] = ()


@dataclass(frozen=True, slots=True)
class GroupInfo:
    """What routing knows of an upstream's group: its name, price and capacity."""

    name: str = ""  # "": a model's triton_url(s), no named group
    price: float = 0.0  # input + output per 1k tokens
    capacity: int | None = None  # requests in flight at which a server of the group is saturated


class Meter:
    """One upstream's recent speed, from the gateway's own requests: EWMAs of the time to the first
    token and of the time per token after it. Updated twice per request (first token, end)."""

    __slots__ = ("samples", "tpot", "ttft", "updated")

    def __init__(self) -> None:
        self.ttft = 0.0  # seconds
        self.tpot: float | None = None  # seconds per token after the first (None: never measured)
        self.samples = 0  # first tokens measured
        self.updated = -math.inf  # when last measured, or claimed for a refresh (monotonic seconds)

    def first_token(self, seconds: float, now: float) -> None:
        self.ttft = seconds if not self.samples else self.ttft + EWMA_WEIGHT * (seconds - self.ttft)
        self.samples += 1
        self.updated = now

    def per_token(self, seconds: float) -> None:
        self.tpot = seconds if self.tpot is None else self.tpot + EWMA_WEIGHT * (seconds - self.tpot)

    @property
    def score(self) -> float:
        """Seconds to a ``FASTEST_TOKENS`` answer (inf until measured); lower is faster."""
        if not self.samples:
            return math.inf
        return self.ttft + FASTEST_TOKENS * (self.tpot or 0.0)


class Candidate(Protocol):
    """What routing reads of an upstream (gateway.engine.upstreams.Upstream)."""

    meter: Meter

    @property
    def load(self) -> int:
        """Requests in flight on the server (every model's)."""
        ...

    @property
    def available(self) -> bool: ...
    @property
    def group(self) -> GroupInfo: ...


U = TypeVar("U", bound=Candidate)


def saturated(u: Candidate) -> bool:
    capacity = u.group.capacity
    return capacity is not None and u.load >= capacity


def least_in_flight(ready: Sequence[U], turn: int) -> U:
    """The one with the fewest in flight; ties go round (``turn`` is where the scan starts)."""
    n = len(ready)
    best = ready[turn % n]
    for i in range(1, n):
        u = ready[(turn + i) % n]
        if u.load < best.load:
            best = u
    return best


def fastest(ready: Sequence[U], now: float, stale_s: float = STALE_S) -> U:
    """The best score (ties: fewer in flight). An upstream never measured, or not for ``stale_s``,
    goes first, once: that request is its measurement (a slow server that recovered is found again)."""
    for u in ready:
        if now - u.meter.updated > stale_s:
            u.meter.updated = now  # claimed: the requests after this one wait for its figures
            return u
    best = ready[0]
    for u in ready[1:]:
        if (u.meter.score, u.load) < (best.meter.score, best.load):
            best = u
    return best


def overloaded(owner: Candidate, least: Candidate, spill_abs: int = SPILL_ABS, spill_rel: float = SPILL_REL) -> bool:
    return owner.load - least.load > max(spill_abs, spill_rel * least.load)


class PrefixTable(Generic[U]):
    """Which upstream last served each prompt prefix, so that prompts sharing a long prefix meet the
    KV-cache blocks their first one left there (TensorRT-LLM's KV-cache reuse).

    A prompt's keys are chained hashes of its whole blocks of ``block_tokens`` tokens (key i stands
    for blocks 0..i), so equal keys mean equal prefixes; a partial last block has no key. The table
    maps keys to upstreams, an LRU of at most ``size`` keys; a request refreshes its keys longest
    first, so the shared heads of prompts outlive their own tails.
    """

    def __init__(
        self, block_tokens: int, size: int = PREFIX_ENTRIES, spill_abs: int = SPILL_ABS, spill_rel: float = SPILL_REL
    ) -> None:
        if block_tokens < 1 or size < 1:
            raise ValueError("block_tokens and size must be positive")
        self.block_tokens = block_tokens
        self.size = size
        self.spill_abs = spill_abs
        self.spill_rel = spill_rel
        self._owners: OrderedDict[int, U] = OrderedDict()

    def __len__(self) -> int:
        return len(self._owners)

    def keys(self, prompt: Sequence[int]) -> list[int]:
        b = self.block_tokens
        keys: list[int] = []
        key = 0
        for end in range(b, len(prompt) + 1, b):
            key = hash((key, tuple(prompt[end - b : end])))
            keys.append(key)
        return keys

    def owner(self, keys: Sequence[int]) -> U | None:
        """The upstream of the longest prefix known."""
        owners = self._owners
        for key in reversed(keys):
            found = owners.get(key)
            if found is not None:
                return found
        return None

    def record(self, keys: Sequence[int], upstream: U) -> None:
        owners = self._owners
        for key in reversed(keys):
            owners[key] = upstream
            owners.move_to_end(key)
        while len(owners) > self.size:
            owners.popitem(last=False)

    def choose(
        self, tier: Sequence[U], ready: Sequence[U], keys: Sequence[int], exclude: Collection[U], turn: int
    ) -> U:
        """The prefix's upstream while it is ready and not overloaded; else the least loaded. A miss,
        or an owner that is gone (unavailable, failed this request, another tier), hands the prefix
        to the one chosen; a spill (owner saturated or overloaded) leaves it with its owner."""
        least = least_in_flight(ready, turn)
        owner = self.owner(keys)
        if owner is not None and owner in ready and not overloaded(owner, least, self.spill_abs, self.spill_rel):
            self.record(keys, owner)  # and the longer prefix this prompt adds
            return owner
        if owner is None or owner not in tier or not owner.available or owner in exclude:
            self.record(keys, least)
        return least


class Route(Generic[U]):
    """One policy over one model's upstreams: tiers in order, and the choice within a tier."""

    __slots__ = ("_all", "_prefix", "fastest", "name", "stale_s", "tiers")

    def __init__(
        self,
        name: str,
        tiers: Sequence[Sequence[U]],
        prefix: PrefixTable[U] | None = None,
        by_speed: bool = False,
        stale_s: float = STALE_S,
    ) -> None:
        self.name = name  # "" (default), a policy, or a group's name
        self.tiers = tuple(tuple(t) for t in tiers if t)
        self._all = tuple(u for t in self.tiers for u in t)
        self._prefix = None if by_speed else prefix
        self.fastest = by_speed
        self.stale_s = stale_s

    @property
    def upstreams(self) -> tuple[U, ...]:
        return self._all

    def keys(self, prompt: Sequence[int]) -> Sequence[int]:
        """What :meth:`choose` needs of a prompt: its prefix keys when this route goes by prefix."""
        return self._prefix.keys(prompt) if self._prefix is not None else NO_KEYS

    def choose(
        self, exclude: Collection[U] = (), keys: Sequence[int] = NO_KEYS, turn: int = 0, now: float | None = None
    ) -> U | None:
        """The upstream for a request (None: every one is excluded)."""
        for tier in self.tiers:
            ready = [u for u in tier if u.available and not saturated(u) and u not in exclude]
            if not ready:
                continue
            if self.fastest:
                return fastest(ready, time.monotonic() if now is None else now, self.stale_s)
            if self._prefix is not None and keys:
                return self._prefix.choose(tier, ready, keys, exclude, turn)
            return least_in_flight(ready, turn)
        return self._fallback(exclude, turn)

    def _fallback(self, exclude: Collection[U], turn: int) -> U | None:
        """Nothing ready: the available one least loaded for its capacity, else any (fewest in flight)."""
        everyone = self._all
        n = len(everyone)
        best: U | None = None
        best_key = (True, math.inf)
        for i in range(n):
            u = everyone[(turn + i) % n]
            if u in exclude:
                continue
            capacity = u.group.capacity
            key = (not u.available, u.load / capacity if u.available and capacity else float(u.load))
            if best is None or key < best_key:
                best, best_key = u, key
        return best


def group_tiers(upstreams: Sequence[U]) -> list[list[U]]:
    """One tier per group, in the order the groups first appear (the model's preference)."""
    tiers: dict[str, list[U]] = {}
    for u in upstreams:
        tiers.setdefault(u.group.name, []).append(u)
    return list(tiers.values())


def price_tiers(upstreams: Sequence[U]) -> list[list[U]]:
    """The groups by price, cheapest first; equal prices share a tier (in order of preference)."""
    tiers: dict[float, list[U]] = {}
    for u in upstreams:
        tiers.setdefault(u.group.price, []).append(u)
    return [tiers[p] for p in sorted(tiers)]


def group_names(upstreams: Sequence[Candidate]) -> tuple[str, ...]:
    return tuple(dict.fromkeys(u.group.name for u in upstreams if u.group.name))


def policy_route(
    policy: str, upstreams: Sequence[U], prefix: PrefixTable[U] | None = None, stale_s: float = STALE_S
) -> Route[U] | None:
    """The route ``model:<policy>`` names (None: no such policy or group). ``fastest`` is chosen by
    speed alone; the others keep the model's choice within a tier (fewest in flight, or prefix).
    A group named like a policy is reached by the policy: name groups otherwise."""
    if policy == FASTEST:
        return Route(policy, [list(upstreams)], by_speed=True, stale_s=stale_s)
    if policy == CHEAPEST:
        return Route(policy, price_tiers(upstreams), prefix)
    members = [u for u in upstreams if u.group.name == policy] if policy else []
    return Route(policy, [members], prefix) if members else None
