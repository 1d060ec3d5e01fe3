"""Regions, astroalign per region and the mean affine, on point sets with known transforms."""

from __future__ import annotations

import numpy as np
import pytest

from astrodask.config import RegionConfig
from astrodask.errors import MatchError
from astrodask.solve.match import (Affine, CandidateList, adapted_grid, coarse_align, fit_affine, grid_shape,
                             match_region, matching_depth, mean_affine, region_grid)

SHAPE = (6388, 9576)


def test_grid_follows_the_aspect_ratio() -> None:
    assert grid_shape(SHAPE, n_regions=24) == (6, 4)
    assert grid_shape((9576, 6388), n_regions=24) == (4, 6)
    assert grid_shape((1000, 1000), n_regions=16) == (4, 4)
    assert grid_shape(SHAPE, n_regions=24, nx=3, ny=2) == (3, 2)
    regions = region_grid(SHAPE)
    assert len(regions) == 24
    # the regions tile the image exactly, once
    area = sum((r.i1 - r.i0) * (r.j1 - r.j0) for r in regions)
    assert area == pytest.approx(SHAPE[0] * SHAPE[1])
    points = np.random.default_rng(0).uniform([0, 0], [SHAPE[1], SHAPE[0]], size=(5000, 2))
    owners = np.sum([r.contains(points) for r in regions], axis=0)
    assert np.all(owners == 1)


def test_sparse_fields_get_fewer_regions() -> None:
    config = RegionConfig()
    assert adapted_grid(5000, config) == (24, 6)
    assert adapted_grid(200, config) == (12, 3)
    assert adapted_grid(20, config) == (4, 2)
    assert adapted_grid(20, RegionConfig(nx=6, ny=4)) == (24, 6)


def test_small_frames_get_fewer_larger_regions() -> None:
    config = RegionConfig()
    assert adapted_grid(50_000, config, SHAPE) == (24, 6)  # a Condor frame keeps its 24
    assert adapted_grid(5_000, config, (1059, 1059)) == (4, 2)  # a 1059 px plate: 2 x 2 of 530 px
    assert adapted_grid(50_000, config, (2400, 2400)) == (12, 3)
    assert adapted_grid(5_000, RegionConfig(nx=6, ny=4), (1059, 1059)) == (24, 6)


def test_fit_affine_recovers_a_known_map() -> None:
    rng = np.random.default_rng(1)
    truth = Affine(np.array([[1.01, 0.02], [-0.03, 0.99]]), np.array([12.0, -7.5]))
    src = rng.uniform(0, 1000, size=(50, 2))
    fitted = fit_affine(src, truth.apply(src))
    np.testing.assert_allclose(fitted.matrix, truth.matrix, atol=1e-12)
    np.testing.assert_allclose(fitted.offset, truth.offset, atol=1e-9)
    np.testing.assert_allclose(fitted.inverse().apply(truth.apply(src)), src, atol=1e-9)
    with pytest.raises(MatchError, match="collinear"):
        fit_affine(np.c_[np.arange(5.0), np.arange(5.0)], np.c_[np.arange(5.0), np.arange(5.0)])


def field(rng: np.random.Generator, n: int, transform: Affine, *, distortion: float = 0.0,
          noise: float = 0.05) -> tuple[np.ndarray, np.ndarray]:
    """Image sources and reference pixels of one star field (brightest first), with a known map."""
    ny, nx = SHAPE
    src = rng.uniform([0, 0], [nx, ny], size=(n, 2))
    r2 = ((src[:, 0] - nx / 2) ** 2 + (src[:, 1] - ny / 2) ** 2) / (nx / 2) ** 2
    bent = src + distortion * r2[:, None] * (src - [nx / 2, ny / 2]) / (nx / 2)
    tgt = transform.apply(bent) + rng.normal(0, noise, size=(n, 2))
    return src, tgt


def rotation(angle_deg: float, scale: float = 1.0) -> np.ndarray:
    angle = np.radians(angle_deg)
    return scale * np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])


def in_frame(points: np.ndarray) -> np.ndarray:
    ny, nx = SHAPE
    return (points[:, 0] > 0) & (points[:, 0] < nx) & (points[:, 1] > 0) & (points[:, 1] < ny)


def candidates(src: np.ndarray, tgt: np.ndarray, n: int = 60) -> list[CandidateList]:
    return [CandidateList("brightest", "astroalign", src[:n], tgt[:n]),
            CandidateList("vote", "vote", src[:300], tgt[:390])]


def test_coarse_alignment_absorbs_pointing_rotation_scale_and_distortion() -> None:
    rng = np.random.default_rng(2)
    truth = Affine(rotation(2.0, 1.02), np.array([700.0, -450.0]))  # 10 arcmin at 0.85"/px
    src, tgt = field(rng, 3000, truth, distortion=15.0)
    # the references of the frame seen through the approximate WCS: most, not all, overlap
    seen = tgt[in_frame(tgt)]
    result = coarse_align(candidates(src, seen), src[:1000], seen[:1300], shape=SHAPE, max_shift_px=850.0,
                          config=RegionConfig())
    centre = np.array([[SHAPE[1] / 2, SHAPE[0] / 2]])
    assert np.linalg.norm(result.affine.apply(centre) - truth.apply(centre)) < 20.0
    accepted = [a for a in result.attempts if a.outcome == "accepted"]
    assert len(accepted) == 1 and accepted[0].n_pairs > 10 * accepted[0].n_chance


def test_offset_vote_aligns_when_flux_ranks_are_scrambled() -> None:
    """A plate or a crowded field: the brightest of the image are not the brightest of the catalog."""
    rng = np.random.default_rng(5)
    truth = Affine(rotation(0.3, 0.995), np.array([-160.0, 95.0]))  # 3 arcmin and 0.3 deg off
    src, tgt = field(rng, 4000, truth, distortion=6.0)
    # the image ranks its stars by a flux that has little to do with Gaia's: shuffle within wide windows
    order = np.argsort(np.arange(len(src)) + rng.normal(0, 800, len(src)))
    src = src[order]
    # and half its stars are lost to crowding and blends, half the references are not seen
    src = src[rng.random(len(src)) < 0.5]
    seen = tgt[in_frame(tgt) & (rng.random(len(tgt)) < 0.7)]
    result = coarse_align(candidates(src, seen), src[:1000], seen[:1300], shape=SHAPE, max_shift_px=850.0,
                          config=RegionConfig())
    by_method = {a.method: a for a in result.attempts}
    assert by_method["vote"].outcome == "accepted", result.attempts
    grid = np.array([[0, 0], [SHAPE[1], 0], [0, SHAPE[0]], [SHAPE[1] / 2, SHAPE[0] / 2]])
    assert np.max(np.linalg.norm(result.affine.apply(grid) - truth.apply(grid), axis=1)) < 10.0


def test_coarse_alignment_of_unrelated_skies_fails_and_says_what_it_tried() -> None:
    rng = np.random.default_rng(6)
    ny, nx = SHAPE
    src = rng.uniform([0, 0], [nx, ny], size=(1500, 2))
    tgt = rng.uniform([0, 0], [nx, ny], size=(2000, 2))
    with pytest.raises(MatchError, match="the coarse alignment failed") as caught:
        coarse_align(candidates(src, tgt), src[:1000], tgt[:1300], shape=SHAPE, max_shift_px=850.0,
                     config=RegionConfig())
    attempts = caught.value.details["coarse"]
    assert [a["method"] for a in attempts] == ["astroalign", "vote"]
    assert all(a["outcome"].startswith(("failed", "rejected")) for a in attempts)


def test_a_region_astroalign_cannot_match_is_paired_by_proximity() -> None:
    rng = np.random.default_rng(7)
    truth = Affine(rotation(0.02), np.array([12.0, -9.0]))
    src, tgt = field(rng, 6000, truth, distortion=4.0)
    region = region_grid(SHAPE)[9]
    inside = np.nonzero(region.contains(src))[0]
    # in this region the brightest 50 sources are stars the catalog does not have
    impostors = rng.uniform([region.i0, region.j0], [region.i1, region.j1], size=(50, 2))
    src_seen = np.concatenate([impostors, src[inside]])
    tgt_seen = tgt[inside]
    config = RegionConfig()
    guess = Affine(truth.matrix, truth.offset + [6.0, -5.0])  # the field's transform, a few px off here
    match = match_region(region, src_seen, tgt_seen, guess=guess, config=config)
    assert match.ok and match.method == "proximity", match.reason
    assert np.all(match.src_index >= 50)  # no impostor paired
    np.testing.assert_array_equal(match.src_index - 50, match.tgt_index)
    # unrelated references: no region, and the reason says both methods failed
    unrelated = rng.uniform([region.i0, region.j0], [region.i1, region.j1], size=(len(inside), 2))
    miss = match_region(region, src_seen, truth.apply(unrelated), guess=truth, config=config)
    assert miss.status == "no-match" and "astroalign" in miss.reason and "proximity" in miss.reason


def test_first_method_proximity_pairs_the_same_stars_without_triangles() -> None:
    rng = np.random.default_rng(8)
    truth = Affine(rotation(0.02), np.array([12.0, -9.0]))
    src, tgt = field(rng, 6000, truth, distortion=4.0)
    region = region_grid(SHAPE)[9]
    guess = Affine(truth.matrix, truth.offset + [6.0, -5.0])
    by_triangles = match_region(region, src, tgt, guess=guess, config=RegionConfig(first_method="astroalign"))
    nearby = match_region(region, src, tgt, guess=guess, config=RegionConfig(first_method="proximity"))
    assert by_triangles.ok and by_triangles.method == "astroalign"
    assert nearby.ok and nearby.method == "proximity", nearby.reason
    np.testing.assert_array_equal(nearby.src_index, nearby.tgt_index)  # every pair a true one
    assert len(nearby.src_index) >= 0.9 * len(by_triangles.src_index)
    np.testing.assert_allclose(nearby.affine.apply(region.centre[None]), by_triangles.affine.apply(region.centre[None]),
                               atol=0.05)


def test_regions_and_mean_affine_survive_bad_regions() -> None:
    rng = np.random.default_rng(3)
    truth = Affine(np.array([[0.999, 0.004], [-0.004, 0.999]]), np.array([35.0, -20.0]))
    src, tgt = field(rng, 4000, truth, distortion=3.0)
    config = RegionConfig()
    regions = region_grid(SHAPE)
    # three regions see a scrambled sky: their references are moved by 300 px
    bad = {regions[0].index, regions[7].index, regions[20].index}
    matches = []
    for region in regions:
        t = tgt.copy()
        if region.index in bad:
            inside = region.contains(src)
            t[inside] += [300.0, 120.0]
        matches.append(match_region(region, src, t, guess=truth, config=config))
    affine, updated = mean_affine(matches, src, tgt, config=config)
    statuses = {m.region.index: m.status for m in updated}
    assert all(statuses[i] != "ok" for i in bad)
    assert sum(s == "ok" for s in statuses.values()) >= 18
    assert all(m.reason for m in updated if not m.ok)
    grid = np.array([[0, 0], [SHAPE[1], 0], [0, SHAPE[0]], [SHAPE[1] / 2, SHAPE[0] / 2]])
    assert np.max(np.linalg.norm(affine.apply(grid) - truth.apply(grid), axis=1)) < 5.0
    # the pairs of an agreeing region are right
    good = next(m for m in updated if m.ok)
    np.testing.assert_array_equal(good.src_index, good.tgt_index)


def test_too_few_good_regions_is_a_clear_error() -> None:
    rng = np.random.default_rng(4)
    src, tgt = field(rng, 60, Affine.identity())
    config = RegionConfig()
    matches = [match_region(r, src, tgt, guess=Affine.identity(), config=config) for r in region_grid(SHAPE)]
    assert all(m.status == "few-stars" for m in matches)
    with pytest.raises(MatchError, match=r"only 0 regions matched, 6 needed \(24 few-stars; is the header.s pointing"):
        mean_affine(matches, src, tgt, config=config)


def test_matching_depth_balances_the_lists() -> None:
    inside = np.array([True, False, True, True, False, True, True])
    assert matching_depth(2, inside, excess=1.0) == 3  # two references inside the image
    assert matching_depth(100, inside, excess=1.3) == len(inside)
