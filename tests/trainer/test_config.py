"""Config dataclass and presets."""

from __future__ import annotations

import pytest

from trainer.config import PRESETS, config_from_dict, make_config, smoke_config
from trainer.errors import TrainerError
from trainer.model import CNN, count_params, flops_per_image


def test_presets_exist_and_default_is_small():
    assert {"small", "large"} <= set(PRESETS)
    assert make_config().preset == "small"


def test_large_has_batchnorm_and_at_least_10x_flops():
    small, large = make_config("small"), make_config("large")
    assert large.model.batch_norm and not small.model.batch_norm
    f_small, f_large = flops_per_image(CNN(small.model)), flops_per_image(CNN(large.model))
    assert f_large >= 10 * f_small, (f_small, f_large)


def test_small_flops_match_hand_count():
    # conv1 1->8 5x5 @28x28, conv2 8->16 5x5 @14x14, dense 784->64, dense 64->10; 2 FLOPs per MAC.
    macs = 28 * 28 * 8 * 25 + 14 * 14 * 16 * 25 * 8 + 16 * 7 * 7 * 64 + 64 * 10
    assert flops_per_image(CNN(make_config("small").model)) == 2 * macs
    assert count_params(CNN(make_config("small").model)) == (8 * 25 + 8) + (16 * 8 * 25 + 16) + (784 * 64 + 64) + (
        64 * 10 + 10
    )


def test_unknown_preset_is_a_trainer_error():
    with pytest.raises(TrainerError, match="unknown preset 'huge'"):
        make_config("huge")


def test_unknown_field_and_bad_values_are_rejected():
    with pytest.raises(TrainerError, match="unknown config field"):
        make_config("small", epoch=3)
    with pytest.raises(TrainerError, match="epochs must be >= 1"):
        make_config("small", epochs=0)
    with pytest.raises(TrainerError, match="kernel_size must be odd"):
        make_config("small", model={"kernel_size": 4})


def test_none_override_keeps_preset_value_and_roundtrip():
    cfg = make_config("large", epochs=None, lr=0.01, model={"hidden": 32})
    assert cfg.epochs == PRESETS["large"]["epochs"] and cfg.lr == 0.01 and cfg.model.hidden == 32
    assert config_from_dict(cfg.to_dict()) == cfg
    assert smoke_config().epochs < make_config().epochs


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ({"lr": float("inf")}, "lr must be a finite number"),  # trained 20 epochs of NaN loss before
        ({"weight_decay": -1.0}, "weight_decay must be a finite number >= 0"),  # was torch's traceback
        ({"weight_decay": float("nan")}, "weight_decay must be a finite number >= 0"),
        ({"seed": -1}, r"seed must be in \[0, 2\*\*32\)"),  # was scikit-learn's traceback
        ({"seed": 2**32}, r"seed must be in"),
    ],
)
def test_numbers_that_would_fail_later_are_rejected_before_training(override: dict, message: str) -> None:
    with pytest.raises(TrainerError, match=message):
        make_config("small", **override)
