"""One schema for the learner's configuration (issue 20): the engine (src/config/) names every
field with its type and default; Python's signature, type checks and view defaults agree with it."""

import inspect
import json
import typing
from typing import Literal, Optional, Tuple

import pytest

import byol_rs
from byol_rs import _core
from byol_rs.augment import Augment
from byol_rs.learner import BYOL, SCHEMA

# Keyword arguments of BYOL that are not configuration: how the learner joins a process group.
NOT_CONFIG = {"self", "distributed", "sync_bn", "process_group"}
PYTHON_TYPE = {"int": int, "float": float, "bool": bool, "str": str, "float_pair": Tuple[float, float], "augment": Augment}


def expected_annotation(field):
    t = Literal[tuple(field["choices"])] if "choices" in field else PYTHON_TYPE[field["type"]]
    return Optional[t] if field["optional"] else t


def normalised(value):
    return list(value) if isinstance(value, tuple) else value


def test_the_signature_names_every_field_of_the_schema_and_nothing_else():
    params = set(inspect.signature(BYOL.__init__).parameters) - NOT_CONFIG
    assert params == set(SCHEMA)


@pytest.mark.parametrize("name", sorted(SCHEMA))
def test_the_signature_default_and_type_are_the_schemas(name):
    param = inspect.signature(BYOL.__init__).parameters[name]
    field = SCHEMA[name]
    assert normalised(param.default) == field["default"], name
    hints = typing.get_type_hints(BYOL.__init__, {**vars(byol_rs.learner), "Augment": Augment})
    assert hints[name] == expected_annotation(field), name


def test_the_paper_defaults():
    # BYOL (arXiv 2006.07733) section 3.3 and appendix C: LARS, weight decay 1.5e-6, eta 1e-3,
    # momentum 0.9, tau from 0.996 to 1, projector and predictor 4096 -> 256, ResNet-50.
    got = {k: SCHEMA[k]["default"] for k in ("backbone", "optimizer", "weight_decay", "eta", "optimizer_momentum",
                                             "tau_base", "tau_final", "projector_hidden", "predictor_hidden", "projection_dim")}
    assert got == {"backbone": "resnet50", "optimizer": "lars", "weight_decay": 1.5e-6, "eta": 1e-3, "optimizer_momentum": 0.9,
                   "tau_base": 0.996, "tau_final": 1.0, "projector_hidden": 4096, "predictor_hidden": 4096, "projection_dim": 256}
    views = json.loads(_core.augment_defaults())
    # appendix B, table 6: blur p 1.0 / 0.1, solarize p 0.0 / 0.2, the rest shared
    assert [(views[v]["blur_p"], views[v]["solarize_p"]) for v in ("view1", "view2")] == [(1.0, 0.0), (0.1, 0.2)]
    assert views["view1"]["crop_scale"] == [0.08, 1.0] and views["view1"]["jitter_p"] == 0.8
    assert (views["view1"]["brightness"], views["view1"]["contrast"], views["view1"]["saturation"], views["view1"]["hue"]) == (0.4, 0.4, 0.2, 0.1)


def test_augment_sends_the_engines_view_defaults():
    assert Augment.byol(224).config == json.loads(_core.augment_defaults())


def test_the_learners_json_is_flat_and_has_every_field():
    learner = BYOL("convnet", in_channels=1, projector_hidden=8, predictor_hidden=8, projection_dim=4, total_steps=5)
    config = learner.config
    assert set(config) == set(SCHEMA)
    assert config["precision"] == "fp32" and config["on_nonfinite"] == "raise" and config["nonfinite_check"] == "auto"


@pytest.mark.parametrize("config, message", [
    ({"weight_dacay": 0.1}, 'config: unknown field "weight_dacay"'),
    ({"lr": "fast"}, 'lr: expected float, got "fast"'),
    ({"accumulate": 1.5}, "accumulate: expected int, got 1.5"),
    ({"betas": [0.9]}, "betas: expected float_pair"),
    ({"precision": "fp8"}, "precision: expected 'fp32', 'bf16' or 'fp16'"),
    ({"on_nonfinite": "ignore"}, "on_nonfinite: expected 'raise' or 'skip'"),
])
def test_the_engine_names_the_field_of_a_bad_json_value(config, message):
    # serde's flattened sections would drop an unknown name and report a type without its field
    with pytest.raises(ValueError, match="^" + message.replace("[", r"\[").replace("(", r"\(")):
        _core.Learner(json.dumps({"backbone": "convnet", **config}))


@pytest.mark.parametrize("kwargs, message", [
    (dict(lr="fast"), "lr: expected float or None, got str"),
    (dict(momentum=1), "momentum: expected bool, got int"),
    (dict(in_channels=True), "in_channels: expected int, got bool"),
    (dict(betas=(0.9,)), "betas: expected a pair of floats"),
])
def test_python_type_checks_come_from_the_schema(kwargs, message):
    with pytest.raises(TypeError, match="^" + message.replace("(", r"\(")):
        BYOL("convnet", **kwargs)
