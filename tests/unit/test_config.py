import pytest
from pydantic import ValidationError

from promptdistill_rag import (
    DistillConfig,
    GemFilterConfig,
    H2OConfig,
    SnapKVConfig,
    TruncateConfig,
    config_for_method,
    parse_config,
)
from promptdistill_rag.config import resolve_keep, resolve_layer


def test_distill_defaults_are_valid():
    config = DistillConfig()
    assert config.method == "promptdistill"
    assert len(config.keep_per_stage()) == len(config.selection_layers)


def test_scalars_become_tuples():
    config = DistillConfig(selection_layers=12, keep=300)
    assert config.selection_layers == (12,)
    assert config.keep == (300,)


def test_keep_broadcasts_to_stages():
    config = DistillConfig(selection_layers=[4, 8, 12], keep=0.5)
    assert config.keep_per_stage() == (0.5, 0.5, 0.5)


@pytest.mark.parametrize("keep", [0, -3, 0.0, 1.5, -0.1, float("nan")])
def test_keep_out_of_range_names_field(keep):
    with pytest.raises(ValidationError, match="keep"):
        DistillConfig(keep=keep)


def test_keep_wrong_type_rejected():
    with pytest.raises(ValidationError, match="keep"):
        DistillConfig(keep="half")


def test_keep_must_not_grow():
    with pytest.raises(ValidationError, match="must not grow"):
        DistillConfig(selection_layers=[4, 8], keep=[100, 200])


def test_keep_count_must_match_stages():
    with pytest.raises(ValidationError, match="one keep value"):
        DistillConfig(selection_layers=[4, 8], keep=[0.5, 0.4, 0.3])


@pytest.mark.parametrize("layer", [1.0, 0.0, -0.5, 2.5])
def test_fractional_layer_out_of_range(layer):
    with pytest.raises(ValidationError, match="selection_layers"):
        DistillConfig(selection_layers=[layer])


def test_empty_layers_rejected():
    with pytest.raises(ValidationError, match="at least one layer"):
        DistillConfig(selection_layers=[])


@pytest.mark.parametrize("kernel", [0, 2, -1])
def test_pooling_kernel_must_be_odd(kernel):
    with pytest.raises(ValidationError, match="pooling_kernel"):
        DistillConfig(pooling_kernel=kernel)


def test_unknown_field_rejected():
    with pytest.raises(ValidationError, match="extra"):
        DistillConfig(keep_ratio=0.5)


def test_unknown_selector_rejected():
    with pytest.raises(ValidationError, match="selector"):
        DistillConfig(selector="middle")


def test_config_is_immutable():
    config = DistillConfig()
    with pytest.raises(ValidationError):
        config.keep = (10,)


def test_config_is_a_value_error():
    with pytest.raises(ValueError):
        DistillConfig(keep=0)


def test_resolve_layer_negative_and_fraction():
    assert resolve_layer(-1, 30) == 29
    assert resolve_layer(0.5, 30) == 15
    assert resolve_layer(0.99, 30) == 29


def test_resolve_layer_past_depth_names_range():
    with pytest.raises(ValueError, match=r"30 decoder layers.*0\.\.29"):
        resolve_layer(30, 30)
    with pytest.raises(ValueError, match="outside"):
        resolve_layer(-31, 30)


def test_resolve_keep_rounds_fractions_up():
    assert resolve_keep(0.25, 10) == 3
    assert resolve_keep(0.001, 10) == 1
    assert resolve_keep(7, 10) == 7


def test_baseline_configs_validate():
    with pytest.raises(ValidationError, match="window"):
        SnapKVConfig(window=0)
    with pytest.raises(ValidationError, match="recent_fraction"):
        H2OConfig(recent_fraction=1.0)
    with pytest.raises(ValidationError, match="selection_layer"):
        GemFilterConfig(selection_layer=1.5)
    with pytest.raises(ValidationError, match="keep"):
        TruncateConfig(keep=0)


def test_config_for_method_builds_each():
    assert config_for_method("gemfilter", keep=10).keep == 10
    assert config_for_method("full").method == "full"


def test_config_for_method_rejects_foreign_parameter():
    with pytest.raises(ValidationError, match="selection_layers"):
        config_for_method("snapkv", selection_layers=[3])


def test_config_for_method_unknown_method_lists_valid():
    with pytest.raises(ValueError, match="valid methods are full, promptdistill"):
        config_for_method("streamingllm")


def test_parse_config_round_trip():
    config = DistillConfig(selection_layers=[4, 9], keep=[0.5, 0.2], granularity="sentence")
    assert parse_config(config.model_dump_json()) == config
    assert parse_config({"method": "h2o", "keep": 64}) == H2OConfig(keep=64)
