"""bench/cold.py on a hand-checkable catalog of 6 items, 2 of them cold (positions 4 and 5)."""

from types import SimpleNamespace

import numpy as np
import pytest

from bench.cold import ColdTestSet, cold_figures, cold_hit_rate, yardsticks


def _data() -> ColdTestSet:
    # query 0: relevant 1 (warm) and 4 (cold), has seen item 0; query 1: relevant 4 and 5 (both cold)
    test = SimpleNamespace(relevant=[np.array([1, 4]), np.array([4, 5])],
                           masked=[np.array([0]), np.array([], dtype=np.int64)])
    return ColdTestSet(catalog=None, test=test, cold=np.array([False, False, False, False, True, True]))


def test_hit_rate_counts_only_cold_pairs_and_respects_masks():
    data = _data()
    scores = np.array([[9.0, 8.0, 7.0, 6.0, 5.0, 0.0],    # masked 0 -> top-2 = {1, 2}: cold 4 missed
                       [9.0, 8.0, 1.0, 0.0, 7.0, 0.5]])   # top-2 = {0, 1}: 4 and 5 missed
    assert data.n_pairs == 3
    assert cold_hit_rate(scores, data, k=2) == 0.0
    assert cold_hit_rate(scores, data, k=4) == pytest.approx(2 / 3)  # q0: {1,2,3,4} hits 4; q1: {0,1,4,2} hits 4
    # among the cold items only, each query's top-1 of {4, 5}: q0 -> 4 (hit), q1 -> 4 (hit; 5 missed)
    assert cold_hit_rate(scores, data, k=1, among_cold=True) == pytest.approx(2 / 3)
    assert cold_hit_rate(scores, data, k=2, among_cold=True) == 1.0


def test_a_masked_item_is_never_a_hit_even_when_the_ranking_is_shorter_than_k():
    data = _data()
    data.test.masked[1] = np.array([4])
    scores = np.zeros((2, 6))
    # among cold for q1 only item 5 is rankable; its masked cold item 4 must not count as a hit
    assert cold_hit_rate(scores, data, k=2, among_cold=True) == pytest.approx(2 / 3)


def test_yardsticks_chance_and_ceiling():
    data = _data()
    out = yardsticks(data, k=1)
    assert out["chance_all_items"] == pytest.approx(1 / 6)
    assert out["chance_among_cold"] == pytest.approx(1 / 2)
    # q0 has 1 cold pair, q1 has 2 sharing one slot: at best (1 + 1) / 3
    assert out["ceiling_all_items"] == pytest.approx(2 / 3)
    figures = cold_figures(np.tile(np.arange(6.0), (2, 1)), data, ks=(1,))
    # item 5 scores highest everywhere: q0 misses its cold 4, q1 hits 5 and misses 4
    assert figures == {"all_items_at_1": pytest.approx(1 / 3), "among_cold_at_1": pytest.approx(1 / 3)}
