"""Placement policy (webcall/workers/placement.py): fill and spread, thresholds, tie-breaks, lost workers."""

from __future__ import annotations

from collections import Counter

import pytest

from webcall.workers.placement import Placement


def test_publishers_go_to_the_least_loaded_worker_round_robin_on_ties():
    p = Placement([0, 1, 2], publisher_weight=4)
    assert [p.place_publisher() for _ in range(3)] == [0, 1, 2]
    assert p.loads() == {0: 4, 1: 4, 2: 4}
    p.set_load(1, 0)
    assert p.place_publisher() == 1


def test_fill_keeps_players_on_the_publishers_worker_until_the_threshold():
    p = Placement([0, 1, 2], mode="fill", threshold=10, player_weight=1, publisher_weight=4)
    pub = p.place_publisher()
    assert pub == 0
    assert [p.place_player(pub) for _ in range(6)] == [0] * 6  # 4 + 6 = 10: still within
    assert p.load(0) == 10
    nxt = p.place_player(pub)
    assert nxt in (1, 2)  # over: the least loaded
    # with a relay to `nxt` already there, the next overflow player joins it rather than opening another relay
    assert p.place_player(pub, relayed_to={nxt}) == nxt


def test_fill_overflow_goes_least_loaded_and_everything_full_still_places():
    p = Placement([0, 1, 2], mode="fill", threshold=5, player_weight=1, publisher_weight=1)
    p.set_load(0, 5)
    p.set_load(1, 3)
    p.set_load(2, 4)
    assert p.place_player(0) == 1
    p.set_load(1, 5)
    p.set_load(2, 5)
    assert p.place_player(0) in (0, 1, 2)  # all full: least loaded overall, never an error
    # a relayed worker that is full is not preferred over one with room
    p.set_load(1, 2)
    assert p.place_player(0, relayed_to={2}) == 1


def test_fill_with_a_lost_publisher_worker():
    p = Placement([0, 1], mode="fill", threshold=10)
    p.set_load(1, 3)
    p.remove_worker(0)
    assert p.place_player(0) == 1
    assert p.place_player(None) == 1
    p.add_worker(0)
    assert p.place_player(None) == 0


def test_spread_distributes_one_streams_players_evenly():
    p = Placement([0, 1, 2, 3], mode="spread")
    pub = p.place_publisher()
    players = Counter(p.place_player(pub) for _ in range(400))
    loads = p.loads()
    assert max(loads.values()) - min(loads.values()) <= 1
    assert players[pub] < players[(pub + 1) % 4]  # the publisher's own weight counts


def test_spread_round_robins_among_equal_workers_when_reports_override_counts():
    p = Placement([0, 1, 2], mode="spread", player_weight=0)  # loads only from reports (e.g. CPU)
    for w in (0, 1, 2):
        p.set_load(w, 20)
    assert [p.place_player(0) for _ in range(6)] == [0, 1, 2, 0, 1, 2]
    p.set_load(2, 5)
    assert p.place_player(0) == 2


def test_release_and_validation():
    p = Placement([0, 1])
    w = p.place_publisher()
    p.release_publisher(w)
    p.release_player(w)  # never below zero
    assert p.loads() == {0: 0, 1: 0}
    with pytest.raises(ValueError):
        Placement([0], mode="pack")  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        Placement([])
    with pytest.raises(ValueError):
        Placement([0], threshold=0)
    with pytest.raises(KeyError):
        p.set_load(5, 1)
    with pytest.raises(ValueError):
        Placement([0]).remove_worker(0)
