"""The depth match: the one-tree implementation equals the literal tree-per-source reference."""

from __future__ import annotations

import logging

import numpy as np
import pytest

from astrodask.solve.depth import (METHOD_DEPTH, METHOD_FAILSAFE, DepthMatch, depth_match, depth_match_literal,
                             failsafe_match, flux_rank_order)

#: (n_sources, n_targets, field side px, rounded positions, integer fluxes) of the random cases
SCENARIOS = {
    "sparse": (60, 90, 400.0, False, False),
    "dense": (80, 120, 25.0, False, False),
    "crowded-ties": (70, 100, 12.0, True, True),  # equal distances and equal fluxes
    "sources-outnumber": (120, 50, 30.0, False, True),
    "few-targets": (40, 3, 10.0, False, False),
    "one-source": (1, 30, 10.0, False, False),
}
WINDOWS = [1, 2, 5, 17, 1000, 0, -1]
RADII = [0.7, 2.0, 6.0]


def _random_case(rng: np.random.Generator, n_src: int, n_tgt: int, side: float, rounded: bool,
                 integer_flux: bool) -> tuple[np.ndarray, ...]:
    tgt_xy = rng.uniform(0.0, side, (n_tgt, 2))
    # most sources sit near a target; a few are spurious
    near = rng.integers(0, max(n_tgt, 1), n_src) if n_tgt else np.zeros(n_src, int)
    src_xy = (tgt_xy[near] if n_tgt else np.zeros((n_src, 2))) + rng.normal(0.0, 0.8, (n_src, 2))
    spurious = rng.random(n_src) < 0.2
    src_xy[spurious] = rng.uniform(0.0, side, (int(spurious.sum()), 2))
    if rounded:
        tgt_xy, src_xy = np.round(tgt_xy), np.round(src_xy)
    if integer_flux:
        return src_xy, rng.integers(0, 4, n_src).astype(float), tgt_xy, rng.integers(0, 4, n_tgt).astype(float)
    return src_xy, rng.lognormal(0.0, 1.0, n_src), tgt_xy, rng.lognormal(0.0, 1.0, n_tgt)


def _assert_same(fast: DepthMatch, slow: DepthMatch) -> None:
    np.testing.assert_array_equal(fast.src_index, slow.src_index)
    np.testing.assert_array_equal(fast.tgt_index, slow.tgt_index)
    np.testing.assert_array_equal(fast.distance_px, slow.distance_px)
    assert fast.method == slow.method


@pytest.mark.parametrize("scenario", sorted(SCENARIOS))
def test_depth_match_equals_literal_on_random_cases(scenario: str) -> None:
    rng = np.random.default_rng(sorted(SCENARIOS).index(scenario))
    n_src, n_tgt, side, rounded, integer_flux = SCENARIOS[scenario]
    n_matched = 0
    for _ in range(4):
        case = _random_case(rng, n_src, n_tgt, side, rounded, integer_flux)
        for window in WINDOWS:
            for radius in RADII:
                fast = depth_match(*case, radius_px=radius, window=window, failsafe=False)
                slow = depth_match_literal(*case, radius_px=radius, window=window, failsafe=False)
                _assert_same(fast, slow)
                n_matched += fast.n_matched
    assert n_matched > 0  # the cases are not trivially empty


def test_depth_match_equals_literal_on_many_small_mixed_cases() -> None:
    rng = np.random.default_rng(7)
    for _ in range(300):
        n_src, n_tgt = (int(n) for n in rng.integers(0, 40, 2))
        case = _random_case(rng, n_src, n_tgt, float(rng.uniform(3, 50)), bool(rng.random() < 0.4),
                            bool(rng.random() < 0.5))
        window = int(rng.choice([0, 1, 2, 3, 8, 50]))
        radius = float(rng.choice([0.5, 1.0, 3.0, 10.0]))
        for failsafe in (False, True):
            _assert_same(depth_match(*case, radius_px=radius, window=window, failsafe=failsafe),
                         depth_match_literal(*case, radius_px=radius, window=window, failsafe=failsafe))


def test_depth_match_equals_literal_on_a_larger_field() -> None:
    rng = np.random.default_rng(11)
    tgt_xy = rng.uniform(0.0, 300.0, (800, 2))
    tgt_flux = rng.pareto(0.6, 800) + 1.0
    truth = rng.choice(800, 500, replace=False, p=tgt_flux / tgt_flux.sum())  # bright ones detected
    src_xy = tgt_xy[truth] + rng.normal(0.0, 0.5, (500, 2))
    src_flux = tgt_flux[truth] * rng.lognormal(0.0, 0.3, 500)
    case = (src_xy, src_flux, tgt_xy, tgt_flux)
    for window in (0, 30, 300):
        fast = depth_match(*case, radius_px=3.0, window=window)
        _assert_same(fast, depth_match_literal(*case, radius_px=3.0, window=window))
        assert fast.n_matched > 100


def test_window_slices_the_remaining_list() -> None:
    # targets ranked 0 (brightest) .. 2; the brightest source sits on target 2
    tgt_xy = np.array([[0.0, 0.0], [10.0, 0.0], [20.0, 0.0]])
    tgt_flux = np.array([30.0, 20.0, 10.0])
    src_xy = np.array([[20.1, 0.0], [0.2, 0.0], [10.3, 0.0]])
    src_flux = np.array([9.0, 8.0, 7.0])
    # window 1: the first source sees only target 0 (out of range) and removes nothing
    one = depth_match(src_xy, src_flux, tgt_xy, tgt_flux, radius_px=1.0, window=1)
    assert one.pairs().tolist() == [[1, 0], [2, 1]]
    # window 0: all remaining targets are candidates
    every = depth_match(src_xy, src_flux, tgt_xy, tgt_flux, radius_px=1.0, window=0)
    assert every.pairs().tolist() == [[0, 2], [1, 0], [2, 1]]
    np.testing.assert_allclose(every.distance_px, [0.1, 0.2, 0.3])
    assert every.method == METHOD_DEPTH and every.window == 0 and one.window == 1


def test_brighter_source_wins_and_equidistant_targets_go_to_the_brighter() -> None:
    tgt_xy = np.array([[0.0, 0.0], [2.0, 0.0]])
    tgt_flux = np.array([1.0, 5.0])  # target 1 is the brighter
    src_xy = np.array([[1.0, 0.0], [1.0, 0.0]])
    src_flux = np.array([1.0, 2.0])  # source 1 is the brighter
    match = depth_match(src_xy, src_flux, tgt_xy, tgt_flux, radius_px=1.5, window=0)
    assert match.pairs().tolist() == [[1, 1], [0, 0]]
    _assert_same(match, depth_match_literal(src_xy, src_flux, tgt_xy, tgt_flux, radius_px=1.5, window=0))


def test_radius_is_inclusive() -> None:
    match = depth_match(np.array([[3.0, 4.0]]), [1.0], np.array([[0.0, 0.0], [9.0, 9.0]]), [1.0, 2.0],
                        radius_px=5.0, window=0)
    assert match.pairs().tolist() == [[0, 0]] and match.distance_px.tolist() == [5.0]


def test_indices_refer_to_the_original_arrays() -> None:
    rng = np.random.default_rng(3)
    src_xy, src_flux, tgt_xy, tgt_flux = _random_case(rng, 80, 120, 60.0, False, False)
    base = depth_match(src_xy, src_flux, tgt_xy, tgt_flux, radius_px=2.0, window=10)
    p, q = rng.permutation(80), rng.permutation(120)
    shuffled = depth_match(src_xy[p], src_flux[p], tgt_xy[q], tgt_flux[q], radius_px=2.0, window=10)
    np.testing.assert_array_equal(p[shuffled.src_index], base.src_index)
    np.testing.assert_array_equal(q[shuffled.tgt_index], base.tgt_index)
    np.testing.assert_allclose(
        np.hypot(*(src_xy[base.src_index] - tgt_xy[base.tgt_index]).T), base.distance_px)
    assert len(set(base.src_index.tolist())) == base.n_matched == len(set(base.tgt_index.tolist()))
    assert not base.src_index.flags.writeable  # frozen result


@pytest.mark.parametrize(("n_src", "n_tgt"), [(0, 0), (0, 5), (5, 0)])
def test_empty_inputs(n_src: int, n_tgt: int) -> None:
    src_xy, tgt_xy = np.zeros((n_src, 2)), np.zeros((n_tgt, 2))
    for matcher in (depth_match, depth_match_literal):
        match = matcher(src_xy, np.ones(n_src), tgt_xy, np.ones(n_tgt), radius_px=1.0, window=3)
        assert match.n_matched == 0 and match.src_index.dtype == np.int64
        assert (match.n_sources, match.n_targets) == (n_src, n_tgt)
    assert depth_match([], [], [], [], radius_px=1.0).n_matched == 0


def test_flux_rank_order_is_stable_with_nan_last() -> None:
    assert flux_rank_order(np.array([1.0, np.nan, 3.0, 1.0, 3.0])).tolist() == [2, 4, 0, 3, 1]


@pytest.mark.parametrize(
    ("kwargs", "fragment"),
    [
        ({"src_xy": np.zeros((3, 3))}, "src_xy must have shape (N, 2)"),
        ({"src_flux": np.ones(2)}, "src_flux has 2 values for 3 positions"),
        ({"tgt_xy": np.array([[0.0, np.nan]] * 4)}, "tgt_xy has 4 non-finite positions"),
        ({"radius_px": 0.0}, "radius_px = 0.0 must be a positive"),
    ],
)
def test_bad_inputs_are_explained(kwargs: dict, fragment: str) -> None:
    args = {"src_xy": np.zeros((3, 2)), "src_flux": np.ones(3), "tgt_xy": np.zeros((4, 2)),
            "tgt_flux": np.ones(4), "radius_px": 1.0}
    args.update(kwargs)
    radius = args.pop("radius_px")
    with pytest.raises(ValueError) as info:
        depth_match(*args.values(), radius_px=radius)
    assert fragment in str(info.value)


# --------------------------------------------------------------------------
# The failsafe
# --------------------------------------------------------------------------


def _brute_force_failsafe(src_xy: np.ndarray, tgt_xy: np.ndarray, radius: float) -> dict[int, int]:
    """Nearest target per source, then the closest source per target, by explicit loops."""
    claims: dict[int, tuple[float, int]] = {}
    for s, xy in enumerate(src_xy):
        d2 = ((tgt_xy - xy) ** 2).sum(axis=1)
        t = int(np.argmin(d2))
        if d2[t] <= radius**2 and (t not in claims or (d2[t], s) < claims[t]):
            claims[t] = (float(d2[t]), s)
    return {s: t for t, (_, s) in claims.items()}


def test_failsafe_resolves_duplicates_keeping_the_closest_source() -> None:
    tgt_xy = np.array([[0.0, 0.0], [10.0, 0.0]])
    src_xy = np.array([[0.5, 0.0], [0.2, 0.0], [-0.3, 0.0], [10.4, 0.0], [50.0, 0.0]])
    match = failsafe_match(src_xy, tgt_xy, radius_px=1.0)
    assert match.method == METHOD_FAILSAFE
    assert sorted(match.pairs().tolist()) == [[1, 0], [3, 1]]
    assert match.n_duplicates == 2  # sources 0 and 2 lost target 0 to source 1
    np.testing.assert_allclose(sorted(match.distance_px), [0.2, 0.4])


def test_failsafe_ties_go_to_the_brighter_source() -> None:
    tgt_xy = np.array([[0.0, 0.0]])
    src_xy = np.array([[1.0, 0.0], [-1.0, 0.0]])
    assert failsafe_match(src_xy, tgt_xy, radius_px=2.0).src_index.tolist() == [0]
    bright_second = failsafe_match(src_xy, tgt_xy, radius_px=2.0, src_flux=np.array([1.0, 2.0]))
    assert bright_second.src_index.tolist() == [1]


def test_failsafe_matches_brute_force_on_random_crowded_fields() -> None:
    rng = np.random.default_rng(5)
    for _ in range(20):
        tgt_xy = rng.uniform(0.0, 30.0, (40, 2))
        src_xy = rng.uniform(0.0, 30.0, (100, 2))
        match = failsafe_match(src_xy, tgt_xy, radius_px=3.0)
        assert len(set(match.tgt_index.tolist())) == match.n_matched  # each target at most once
        assert dict(zip(match.src_index.tolist(), match.tgt_index.tolist())) == _brute_force_failsafe(
            src_xy, tgt_xy, 3.0)
        assert match.n_duplicates > 0


def test_depth_match_switches_to_the_failsafe_when_sources_outnumber_targets(
        caplog: pytest.LogCaptureFixture) -> None:
    rng = np.random.default_rng(9)
    src_xy, src_flux, tgt_xy, tgt_flux = _random_case(rng, 60, 20, 20.0, False, False)
    with caplog.at_level(logging.INFO, logger="astrodask.solve.depth"):
        match = depth_match(src_xy, src_flux, tgt_xy, tgt_flux, radius_px=2.0, window=5)
    assert match.method == METHOD_FAILSAFE
    assert "60 sources outnumber 20 targets" in caplog.text
    expected = failsafe_match(src_xy, tgt_xy, radius_px=2.0, src_flux=src_flux)
    _assert_same(match, expected)
    # ordered by source brightness, like the depth match
    assert np.all(np.diff(src_flux[match.src_index]) <= 0)
    # without the failsafe the depth match runs and leaves the excess sources unmatched
    plain = depth_match(src_xy, src_flux, tgt_xy, tgt_flux, radius_px=2.0, window=5, failsafe=False)
    assert plain.method == METHOD_DEPTH and plain.n_matched <= 20
