"""The one config: defaults, validation, overrides in order of precedence."""

from __future__ import annotations

import pytest

from astrodask.config import (CLIPPING_THRESHOLD, ERROR_THRESHOLD, PipelineConfig, describe, merge_dicts,
                              parse_assignment)
from astrodask.errors import AstrodaskError, ConfigError


def test_defaults_carry_the_condor_names_and_values() -> None:
    config = PipelineConfig()
    assert config.fit.CLIPPING_THRESHOLD == CLIPPING_THRESHOLD
    assert config.fit.ERROR_THRESHOLD == ERROR_THRESHOLD
    assert config.regions.n_regions == 24
    assert config.fit.tpv_degree == 3
    # the depth pass is more relaxed than the first pass
    assert config.detect.depth.thresh_sigma < config.detect.first.thresh_sigma


def test_round_trip_through_dict() -> None:
    config = PipelineConfig.from_dict({"fit": {"tpv_degree": 5}, "detect": {"depth": {"minarea": 2}}})
    again = PipelineConfig.from_dict(config.to_dict())
    assert again == config
    assert again.fit.tpv_degree == 5 and again.detect.depth.minarea == 2
    assert again.detect.first.minarea == PipelineConfig().detect.first.minarea


def test_config_is_frozen() -> None:
    config = PipelineConfig()
    with pytest.raises(AttributeError):
        config.fit.tpv_degree = 4  # type: ignore[misc]


@pytest.mark.parametrize(
    ("overrides", "fragment"),
    [
        ({"fit": {"tpv_degree": 9}}, "fit.tpv_degree = 9 is out of range"),
        ({"fit": {"bogus": 1}}, "unknown config key fit.bogus"),
        ({"nope": {}}, "unknown config key nope"),
        ({"detect": {"depth": {"minarea": "many"}}}, "detect.depth.minarea = 'many' must be an integer"),
        ({"detect": {"first": {"thresh_sigma": float("nan")}}}, "detect.first.thresh_sigma = nan must be finite"),
        ({"pointing": {"parity": 0}}, "pointing.parity = 0 is not one of [1, -1]"),
        ({"regions": {"nx": 4}}, "set both or neither"),
        ({"fit": 3}, "config section fit must be a mapping"),
    ],
)
def test_bad_values_name_field_value_and_range(overrides: dict, fragment: str) -> None:
    with pytest.raises(ConfigError) as info:
        PipelineConfig.from_dict(overrides)
    assert fragment in str(info.value)
    assert isinstance(info.value, AstrodaskError) and isinstance(info.value, ValueError)


def test_keys_accept_dashes_and_any_case() -> None:
    config = PipelineConfig.from_dict({"fit": {"clipping_threshold": "1.5", "tpv-degree": "4"}})
    assert config.fit.CLIPPING_THRESHOLD == 1.5
    assert config.fit.tpv_degree == 4


def test_parse_assignment_and_merge() -> None:
    assert parse_assignment("fit.tpv_degree=4") == {"fit": {"tpv_degree": 4}}
    assert parse_assignment("detect.first.clean=false") == {"detect": {"first": {"clean": False}}}
    merged = merge_dicts({"fit": {"tpv_degree": 2, "rms_clip_rounds": 1}}, {"fit": {"tpv-degree": 4}})
    assert merged == {"fit": {"tpv_degree": 4, "rms_clip_rounds": 1}}
    with pytest.raises(ConfigError, match="expected SECTION.FIELD=VALUE"):
        parse_assignment("fit.tpv_degree")


def test_describe_documents_every_field() -> None:
    rows = describe()
    keys = [key for key, *_ in rows]
    assert "fit.CLIPPING_THRESHOLD" in keys and "detect.depth.thresh_sigma" in keys
    assert len(keys) == len(set(keys))
    assert all(doc for *_, doc in rows)


def test_a_key_of_a_nested_section_keeps_that_sections_own_defaults() -> None:
    """Setting one key of detect.depth keeps the depth pass's defaults, not those of the class it shares
    with detect.first (a --set detect.depth.minarea=4 once turned the relaxed pass into a 3-sigma one)."""
    default = PipelineConfig()
    changed = PipelineConfig.from_dict({"detect": {"depth": {"minarea": 4}}})
    assert changed.detect.depth.minarea == 4
    assert changed.detect.depth.thresh_sigma == default.detect.depth.thresh_sigma != default.detect.first.thresh_sigma
    assert changed.detect.depth.deblend_cont == default.detect.depth.deblend_cont
    assert changed.detect.first == default.detect.first
    assert default.replace({"detect": {"first": {"thresh_sigma": 5.0}}}).detect.depth == default.detect.depth
