"""A checkpoint's recorded settings rebuild the config of its step: any checkpoint says how to repeat that step."""
import json
from dataclasses import replace

import pytest

from models import DEFAULT_CHECKPOINT
from research import recipes
from wilss.checkpoint import load_checkpoint
from wilss.config import PretrainConfig, UpdateConfig, from_dict, to_dict


@pytest.mark.parametrize("cfg", [UpdateConfig(), recipes.WORLD_UPDATE,
                                 replace(recipes.DEMO_UPDATE, scale_range=(0.6, 1.4), auto_old_tags=True, seed=3),
                                 PretrainConfig(), recipes.WORLD_PRETRAIN, replace(PretrainConfig(), loss="ce")],
                         ids=["update", "world update", "demo update, changed", "pretrain", "world pretrain", "ce"])
def test_settings_round_trip_through_a_checkpoint(cfg):
    settings = json.loads(json.dumps({"method": "wilss", "task": "7-2", **to_dict(cfg)}))  # as history stores them
    assert from_dict(type(cfg), settings) == cfg   # other keys of the entry are ignored, lists become tuples


def test_older_settings_take_the_defaults_of_what_they_lack():
    settings = to_dict(UpdateConfig(epochs=7))
    del settings["pamr_refine_stride"], settings["localizer_detail"]
    assert from_dict(UpdateConfig, settings) == UpdateConfig(epochs=7)


def test_the_shipped_base_records_the_recipe_that_trains_it():
    # README: `pretrain --out models/default_base.pt` reproduces the shipped base; its history says with what
    if not DEFAULT_CHECKPOINT.exists():
        pytest.skip(f"{DEFAULT_CHECKPOINT} is missing")
    step0 = load_checkpoint(DEFAULT_CHECKPOINT).history[0]
    assert step0["kind"] == "pretrain" and from_dict(PretrainConfig, step0["settings"]) == recipes.WORLD_PRETRAIN
