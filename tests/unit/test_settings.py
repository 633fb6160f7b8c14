"""Operator settings: one class, DISTILLERY_* variables, flags that win over them."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from distillery.settings import Settings


def test_environment_parsed_and_flags_win() -> None:
    env = {
        "DISTILLERY_NAMESPACES": "team-a, team-b,,",
        "DISTILLERY_AUTOSCALE_INTERVAL_SECONDS": "5",
        "DISTILLERY_PROMETHEUS_INSECURE_SKIP_VERIFY": "true",
        "DISTILLERY_IMAGE_VLLM": "registry.example/vllm:1",
        "UNRELATED": "x",
    }
    s = Settings.from_env(env)
    assert s.namespaces == ["team-a", "team-b"]
    assert s.autoscale_interval_seconds == 5.0 and s.prometheus_insecure_skip_verify is True
    assert s.images() == {"vllm": "registry.example/vllm:1"}
    # A flag given wins; a flag left unset (None, empty) keeps the environment's value.
    s = Settings.from_env(env, autoscale_interval_seconds=2.0, namespaces=[], log_level=None)
    assert s.autoscale_interval_seconds == 2.0 and s.namespaces == ["team-a", "team-b"]
    assert Settings.from_env({}).resync_interval_seconds == 300.0


@pytest.mark.parametrize(
    "key,value",
    [
        ("DISTILLERY_AUTOSCALE_INTERVAL_SECONDS", "0"),
        ("DISTILLERY_METRICS_PORT", "70000"),
        ("DISTILLERY_LOG_LEVEL", "CHATTY"),
        ("DISTILLERY_POD_MONITOR", "sometimes"),
    ],
)
def test_bad_values_are_refused_naming_the_setting(key: str, value: str) -> None:
    field = key.removeprefix("DISTILLERY_").lower()
    with pytest.raises(ValidationError, match=field):
        Settings.from_env({key: value})


def test_every_setting_has_a_flag_and_a_description() -> None:
    flags = [Settings.flag(name) for name in Settings.model_fields]
    assert len(set(flags)) == len(flags)
    assert all(f.startswith("--") for f in flags)
    assert all(info.description for info in Settings.model_fields.values())
