"""The node picker: rendezvous hashing of the prompt's prefix (the same favourite on every
gateway, for every prompt sharing the prefix, and minimal movement when nodes come and go), the
load guard, and no starvation among equals."""

from __future__ import annotations

import random
from collections import Counter
from dataclasses import dataclass

from chatforge.upstream.balancer import Balancer, prefix_key, rendezvous


@dataclass(eq=False)
class Node:
    url: str
    weight: float = 1.0
    load: int = 0


def nodes(n: int) -> list[Node]:
    return [Node(f"http://10.0.0.{i}:8001") for i in range(n)]


def prompt(system: int, user: int, length: int = 300) -> list[int]:
    """A long shared system prompt (by `system`) then a user turn."""
    rng = random.Random(system)
    return [rng.randrange(50_000) for _ in range(length)] + [user, user + 1, user + 2]


def test_the_favourite_depends_on_the_prefix_only_and_is_the_same_for_every_gateway():
    fleet = nodes(4)
    gateways = [Balancer(rng=random.Random(i)) for i in range(3)]  # three gateways, no shared state
    for system in range(20):
        picks = {g.pick(fleet, prompt(system, user)).upstream.url for g in gateways for user in range(0, 50, 5)}
        assert len(picks) == 1


def test_prefixes_spread_over_the_nodes_by_weight():
    fleet = nodes(4)
    fleet[0].weight = 2.0
    counts = Counter(rendezvous(fleet, prefix_key(prompt(s, 0), 64)).url for s in range(2000))
    shares = {url: counts[url] / 2000 for url in counts}
    assert abs(shares[fleet[0].url] - 0.4) < 0.05
    for node in fleet[1:]:
        assert abs(shares[node.url] - 0.2) < 0.05


def test_removing_a_node_moves_only_its_own_prefixes():
    fleet = nodes(5)
    before = {s: rendezvous(fleet, prefix_key(prompt(s, 0), 64)) for s in range(500)}
    gone = fleet[2]
    after = {s: rendezvous([n for n in fleet if n is not gone], prefix_key(prompt(s, 0), 64)) for s in range(500)}
    moved = {s for s in before if before[s] is not after[s]}
    assert moved == {s for s in before if before[s] is gone}


def test_a_short_prompt_is_hashed_whole():
    assert prefix_key([1, 2, 3], 64) != prefix_key([1, 2, 4], 64)
    assert prefix_key(list(range(40)), 64) != prefix_key(list(range(39)) + [7], 64)  # not only its whole blocks
    long_a, long_b = list(range(70)), list(range(64)) + [999] * 6
    assert prefix_key(long_a, 64) == prefix_key(long_b, 64)  # the same first 64 tokens


def test_a_loaded_favourite_is_left_for_the_less_loaded_of_two():
    fleet = nodes(3)
    balancer = Balancer(abs_threshold=8, rel_threshold=1.5, rng=random.Random(0))
    p = prompt(7, 0)
    favourite = balancer.pick(fleet, p).upstream
    favourite.load = 8  # 8 more than the others: not past the absolute threshold yet
    assert balancer.pick(fleet, p) .upstream is favourite
    favourite.load = 9
    picks = {balancer.pick(fleet, p).upstream for _ in range(50)}
    assert favourite not in picks and len(picks) == 2
    for node in fleet:
        node.load += 20  # 29 vs 20: more than 8 apart but not 1.5 times: keep the favourite
    assert balancer.pick(fleet, p).affinity


def test_least_outstanding_breaks_ties_at_random():
    fleet = nodes(3)
    balancer = Balancer("least_outstanding", rng=random.Random(1))
    counts = Counter(balancer.pick(fleet, [1]).upstream.url for _ in range(3000))
    assert all(800 < counts[n.url] < 1200 for n in fleet)
    fleet[1].load = 1
    assert {balancer.pick(fleet, [1]).upstream.url for _ in range(100)} == {fleet[0].url, fleet[2].url}


def test_round_robin_takes_each_in_turn():
    fleet = nodes(3)
    balancer = Balancer("round_robin")
    assert Counter(balancer.pick(fleet, [1]).upstream.url for _ in range(30)) == {n.url: 10 for n in fleet}
