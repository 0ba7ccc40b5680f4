"""The configuration reference in docs/ is generated from the settings class and must match it."""

from __future__ import annotations

from pathlib import Path

from pipeserve.docs import settings_reference

DOCS = Path(__file__).resolve().parents[1] / "docs"


def test_configuration_reference_is_current() -> None:
    assert (DOCS / "configuration.md").read_text() == settings_reference(), (
        "docs/configuration.md is stale: run `pipeserve settings > docs/configuration.md`"
    )


def test_every_setting_has_a_description() -> None:
    from pipeserve.engines.llamacpp.options import LlamaCppOptions
    from pipeserve.settings import ModelConfig, Settings

    for model in (Settings, ModelConfig, LlamaCppOptions):
        for name, field in model.model_fields.items():
            assert field.description, f"{model.__name__}.{name} has no description"
