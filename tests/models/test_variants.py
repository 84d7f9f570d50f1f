"""The built-in variants (latentseg.models.variants): each builder's name is its registry key
(``_`` -> ``-``), its defaults are what the name promises, and overrides win over them."""

from __future__ import annotations

import inspect

from latentseg.models import create_model, list_models, variants


def builders() -> dict[str, object]:
    return {
        name.replace("_", "-"): function
        for name, function in inspect.getmembers(variants, inspect.isfunction)
        if function.__module__ == variants.__name__ and not name.startswith("_")
    }


def test_every_builder_is_registered_under_its_name_and_builds_the_same_model():
    found = builders()
    assert set(found) <= set(list_models()) and "tutorial" in found and "mla-r8" in found
    for name, build in found.items():
        assert create_model(name).config == build().config, name


def test_the_names_promise_their_settings_and_overrides_win():
    assert variants.latents_8().config.num_latents == 8
    assert variants.heads_1().config.num_heads == 1
    assert variants.no_expert().config.expert_attention is False
    assert variants.latents_8(num_latents=2).config.num_latents == 2
