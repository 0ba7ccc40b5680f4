"""Settings: defaults, the TOML file, PIPESERVE_* variables over it, keyword overrides over both."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from pydantic import ValidationError

from pipeserve.settings import EMBEDDED_MODEL_ID, Settings

CONFIG = """
host = "0.0.0.0"
port = 9001
log_level = "debug"

[[models]]
id = "tiny"
aliases = ["openpipe:tiny"]
path = "/models/tiny.gguf"
n_ctx = 4096

[[models]]
id = "other"
engine = "echo"
"""


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in list(os.environ):
        if name.upper().startswith("PIPESERVE_"):
            monkeypatch.delenv(name)


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "pipeserve.toml"
    path.write_text(text)
    return path


def test_defaults() -> None:
    settings = Settings.load()
    assert (settings.host, settings.port, settings.max_queued_requests, settings.log_level) == (
        "127.0.0.1",
        8000,
        256,
        "info",
    )
    [model] = settings.models
    assert model.id == EMBEDDED_MODEL_ID == "SmolLM2-135M-Instruct"
    assert model.aliases == ["openpipe:smollm2-135m-instruct"]
    assert model.engine == "llamacpp"
    assert model.engine_options == {}
    assert settings.keys_file == settings.data_dir / "keys.json"


def test_load_from_toml(tmp_path: Path) -> None:
    settings = Settings.load(write(tmp_path, CONFIG))
    assert (settings.host, settings.port, settings.log_level) == ("0.0.0.0", 9001, "debug")
    tiny, other = settings.models
    assert (tiny.id, tiny.aliases, tiny.engine) == ("tiny", ["openpipe:tiny"], "llamacpp")
    assert tiny.engine_options == {"path": "/models/tiny.gguf", "n_ctx": 4096}
    assert (other.id, other.aliases, other.engine, other.engine_options) == ("other", [], "echo", {})


def test_environment_overrides_the_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PIPESERVE_PORT", "9100")
    settings = Settings.load(write(tmp_path, CONFIG))
    assert settings.port == 9100
    assert settings.host == "0.0.0.0"


def test_environment_without_a_file(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PIPESERVE_PORT", "9100")
    monkeypatch.setenv("PIPESERVE_MODELS", '[{"id": "env-model", "n_gpu_layers": 0}]')
    settings = Settings.load()
    assert settings.port == 9100
    assert [m.id for m in settings.models] == ["env-model"]
    assert settings.models[0].engine_options == {"n_gpu_layers": 0}


def test_keyword_overrides_beat_environment_and_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PIPESERVE_PORT", "9100")
    assert Settings.load(write(tmp_path, CONFIG), port=9200, data_dir=tmp_path).port == 9200
    assert Settings.load(port=9300).port == 9300
    assert Settings.load(data_dir=tmp_path).keys_file == tmp_path / "keys.json"


@pytest.mark.parametrize(
    ("models", "problem"),
    [
        ('[[models]]\nid = "a"\n[[models]]\nid = "a"\n', "'a' is used twice"),
        ('[[models]]\nid = "a"\n[[models]]\nid = "b"\naliases = ["a"]\n', "'a' is used twice"),
        ('[[models]]\nid = "a"\naliases = ["x", "x"]\n', "'x' is used twice"),
        ("models = []\n", "at least one model"),
    ],
    ids=["same id", "alias of another id", "alias twice", "no models"],
)
def test_bad_model_lists_are_rejected(tmp_path: Path, models: str, problem: str) -> None:
    with pytest.raises(ValidationError, match=problem):
        Settings.load(write(tmp_path, models))


def test_duplicate_names_passed_as_keywords_are_rejected() -> None:
    with pytest.raises(ValidationError, match="used twice"):
        Settings.load(models=[{"id": "a"}, {"id": "A", "aliases": ["a"]}])


def test_unknown_setting_is_rejected(tmp_path: Path) -> None:
    with pytest.raises(ValidationError, match="prot"):
        Settings.load(write(tmp_path, "prot = 1\n"))


def test_missing_config_file(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        Settings.load(tmp_path / "absent.toml")


@pytest.mark.parametrize(
    ("host", "loopback"),
    [
        ("127.0.0.1", True),
        ("127.0.0.2", True),
        ("::1", True),
        ("localhost", True),
        ("0.0.0.0", False),
        ("::", False),
        ("192.0.2.1", False),
        ("example.com", False),
    ],
)
def test_host_is_loopback(host: str, loopback: bool) -> None:
    assert Settings.load(host=host).host_is_loopback is loopback


def test_provider_presets_are_served_when_their_keys_are_set_and_tables_override_them() -> None:
    settings = Settings(providers=[{"prefix": "anthropic", "base_url": "http://127.0.0.1:9"}, {"prefix": "vllm"}])
    routed = {p.prefix: p for p in settings.routed_providers({"GEMINI_API_KEY": "k"})}
    assert set(routed) == {"gemini", "anthropic", "vllm"}  # openai: no OPENAI_API_KEY, no table
    assert routed["anthropic"].engine == "anthropic"
    assert routed["anthropic"].engine_options["base_url"] == "http://127.0.0.1:9"
    assert routed["anthropic"].engine_options["api_key_env"] == "ANTHROPIC_API_KEY"
    assert routed["gemini"].engine == "openai" and "googleapis" in routed["gemini"].engine_options["base_url"]
    assert routed["vllm"].engine == "openai" and "base_url" not in routed["vllm"].engine_options


@pytest.mark.parametrize(
    ("fallbacks", "message"),
    [(["nowhere"], "neither a served model"), (["m"], "itself"), (["openai:gpt-4o", "nope:x"], "nope:x")],
)
def test_fallbacks_must_name_served_models_or_provider_routes(fallbacks: list[str], message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        Settings(models=[{"id": "m", "fallbacks": fallbacks}])
    Settings(models=[{"id": "m", "fallbacks": ["openai:gpt-4o"]}, {"id": "n", "fallbacks": ["m"]}])
