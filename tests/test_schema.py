"""One schema: every config key is declared once, with one default, and has one validator."""

from __future__ import annotations

import ast
import dataclasses
from collections import defaultdict
from pathlib import Path

import pytest

from lmfuse import schema
from lmfuse.errors import LmfuseError
from lmfuse.models import registry
from lmfuse.models.fusion import WEIGHTS_KINDS, FusionConfig
from lmfuse.models.rnn import RNNConfig

# Fields that are no config key: filled in by build_model, or module options.
NOT_KEYS = {"vocab_size", *registry.MODULE_OPTIONS}
# Fusion keys only a config holds (the method: '' is off, so FusionConfig has no default).
FUSION_CONFIG_ONLY = {"method", "lm_workdir", "s2s_workdir", "s2s_step", "lm_model"}


def declarations(config_classes) -> dict[str, set[str]]:
    """Field name -> the classes whose own body declares it, over the classes and their bases."""
    where = defaultdict(set)
    for config_class in config_classes:
        for cls in config_class.__mro__:
            if dataclasses.is_dataclass(cls):
                for name in vars(cls).get("__annotations__", {}):
                    where[name].add(cls.__qualname__)
    return where


def test_every_model_key_is_declared_once():
    where = declarations({config_class for _, config_class in registry.FAMILIES.values()})
    for key in registry.CONFIG_ONLY_KEYS:
        where[key].add("CONFIG_ONLY_KEYS")
    twice = {key: sorted(places) for key, places in where.items() if len(places) > 1}
    assert not twice, f"keys declared more than once: {twice}"
    assert set(registry.model_defaults()) == set(where) - NOT_KEYS


def test_every_model_name_has_a_family():
    assert set(registry.FAMILIES) == set(registry.MODEL_NAMES)
    assert registry.CONFIG_ONLY_KEYS["name"] in registry.MODEL_NAMES


@pytest.mark.parametrize("name", registry.MODEL_NAMES)
def test_model_defaults_are_the_dataclass_defaults(name):
    _, config_class = registry.FAMILIES[name]
    defaults = registry.model_defaults()
    for field in dataclasses.fields(config_class):
        if field.name in NOT_KEYS:
            continue
        assert field.default is not dataclasses.MISSING, f"{field.name} has no default"
        assert defaults[field.name] == field.default
        assert type(defaults[field.name]) is type(field.default)
    # A model built from a config that sets nothing but the name is the dataclass's default.
    built = registry.build_model({"name": name}, 11).cfg
    cell = {"cell": name} if config_class is RNNConfig else {}
    assert built == config_class(vocab_size=11, **cell)


def test_base_config_takes_the_model_and_fusion_keys_from_the_dataclasses():
    config = schema.base_config()
    assert config.model.to_dict() == registry.model_defaults().to_dict()
    fusion = config.fusion.to_dict()
    assert set(fusion) == FUSION_CONFIG_ONLY | set(registry.fusion_defaults())
    assert {k: v for k, v in fusion.items() if k not in FUSION_CONFIG_ONLY} == registry.fusion_defaults()
    declared = {f.name for f in dataclasses.fields(FusionConfig)}
    assert not (FUSION_CONFIG_ONLY - {"method"}) & declared
    assert fusion["method"] == "" and fusion["weights_kind"] in WEIGHTS_KINDS


def test_schema_groups_set_each_key_once():
    # The groups written out in lmfuse/schema.py: a second assignment would be a second default.
    tree = ast.parse(Path(schema.__file__).read_text())
    for function in (node for node in tree.body if isinstance(node, ast.FunctionDef)):
        keys = [
            target.attr
            for node in ast.walk(function)
            if isinstance(node, ast.Assign)
            for target in node.targets
            if isinstance(target, ast.Attribute)
        ]
        assert len(keys) == len(set(keys)), f"{function.name} sets a key twice: {keys}"


def test_every_model_key_with_choices_has_one_validator():
    defaults = registry.model_defaults()
    text_keys = {key for key, value in defaults.items() if isinstance(value, str)}
    assert text_keys == set(registry.CHOICES)
    for key, allowed in registry.CHOICES.items():
        assert defaults[key] in allowed
        assert len(set(allowed)) == len(allowed)
    for key in registry.POSITIVE_INTS:
        assert type(defaults[key]) is int and defaults[key] > 0


@pytest.mark.parametrize("key", sorted(registry.CHOICES))
def test_a_value_outside_the_choices_is_a_one_line_error(key):
    with pytest.raises(LmfuseError, match=f"model.{key}='nope' is not one of"):
        registry.build_model({key: "nope"}, 11)


@pytest.mark.parametrize("key", registry.POSITIVE_INTS)
def test_a_non_positive_size_is_a_one_line_error(key):
    with pytest.raises(LmfuseError, match=f"model.{key}=0 must be positive"):
        registry.build_model({key: 0}, 11)
