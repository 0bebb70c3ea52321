import pytest

from core.config import ConfigError, DLNConfig, parse_variant


def test_defaults_are_the_authors_code():
    cfg = DLNConfig()
    assert (cfg.dim, cfg.brightness, cfg.gamma, cfg.residual_sign) == (64, True, 1.0, "code")
    assert cfg.input_channels == 4
    assert DLNConfig(brightness=False).input_channels == 3


@pytest.mark.parametrize("dim", [0, 8, 15, 17, -64])
def test_widths_below_the_fa_reduction_or_odd_are_refused(dim):
    with pytest.raises(ConfigError):
        DLNConfig(dim=dim)


def test_variant_string_parses_every_switch():
    got = parse_variant("brightness=off, residual_sign=paper,gamma=0.5")
    assert got == {"brightness": False, "residual_sign": "paper", "gamma": 0.5}
    assert parse_variant(None) == {} and parse_variant("") == {}


@pytest.mark.parametrize("bad", ["brightness=maybe", "colour=on", "gamma=abc", "gamma",
                                 "residual_sign=up", "gamma=nan", "gamma=1,gamma=2"])
def test_bad_variant_strings_raise_one_config_error(bad):
    with pytest.raises(ConfigError):
        parse_variant(bad)


def test_config_json_round_trips_and_rejects_unknown_fields():
    cfg = DLNConfig(dim=16, brightness=False, gamma=0.25, residual_sign="paper")
    assert DLNConfig.from_json(cfg.to_json()) == cfg
    with pytest.raises(ConfigError):
        DLNConfig.from_json('{"dim": 64, "depth": 3}')


@pytest.mark.parametrize("text", ['{"gamma": "bright"}', '{"gamma": null}', '{"gamma": true}',
                                  '{"residual_sign": ["code"]}', '{"dim": "64"}',
                                  '{"brightness": "on"}'])
def test_stored_configs_of_the_wrong_type_raise_config_error_not_a_traceback(text):
    with pytest.raises(ConfigError):
        DLNConfig.from_json(text)


@pytest.mark.parametrize("text", ["dim=1026", "dim=20000", "dim=" + "9" * 40])
def test_absurd_widths_are_one_config_error_before_anything_is_sized(text):
    from core.config import MAX_DIM

    with pytest.raises(ConfigError) as info:
        parse_variant(text)
    assert "\n" not in str(info.value)
    assert DLNConfig(dim=MAX_DIM).dim == MAX_DIM


def test_a_stored_config_nested_past_the_recursion_limit_is_a_config_error():
    with pytest.raises(ConfigError):
        DLNConfig.from_json("[" * 100_000 + "]" * 100_000)
