"""Method registry: known methods build the right modules; unknown ones and a missing MoME fail clearly."""

from __future__ import annotations

import importlib.util

import pytest
from exp_helpers import QUICK_MODEL

from experiments.methods import available_methods, build_method, check_method, register_method


def test_unknown_method_is_refused_with_the_choices():
    with pytest.raises(ValueError, match=r"unknown method 'ewc'.*\['full', 'lora', 'mome'\]"):
        check_method("ewc")


def test_full_trains_every_weight_and_lora_only_the_adapter():
    full = build_method("full", QUICK_MODEL, 0)
    lora = build_method("lora", QUICK_MODEL, 0, {"lora_r": 2})
    assert all(p.requires_grad for p in full.parameters())
    trainable = [n for n, p in lora.named_parameters() if p.requires_grad]
    assert trainable and all("lora_" in n for n in trainable)


@pytest.mark.skipif(importlib.util.find_spec("memexp.mome_module") is not None, reason="MoME has landed")
def test_mome_without_the_module_names_the_fix():
    with pytest.raises(ValueError, match="merge the MoME branch"):
        build_method("mome", QUICK_MODEL, 0)


def test_registering_a_method_makes_it_buildable():
    register_method("probe-only", lambda backbone, seed, options: ("built", backbone, seed, options))
    try:
        assert build_method("probe-only", "b", 3, {"x": 1}) == ("built", "b", 3, {"x": 1})
        assert "probe-only" in available_methods()
    finally:
        from experiments import methods

        methods._REGISTRY.pop("probe-only")
