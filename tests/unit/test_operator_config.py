"""Operator settings: flags over TTS_OPERATOR_* env, clear errors for bad input."""

from __future__ import annotations

import pytest

from tts_operator import config


def test_flags_list_namespaces() -> None:
    s = config.parse(["-n", "a", "--namespace", "b"], {})
    assert s.namespaces == ("a", "b")
    assert not s.all_namespaces


def test_env_gives_settings_the_chart_passes() -> None:
    env = {
        "TTS_OPERATOR_NAMESPACES": "tts, ml ,",
        "TTS_OPERATOR_METRICS_PORT": "9090",
        "TTS_OPERATOR_INFERENCE_IMAGE": "registry.example/inference:1",
        "TTS_OPERATOR_PEERING": "tts",
    }
    s = config.parse([], env)
    assert s.namespaces == ("tts", "ml")
    assert s.metrics_port == 9090
    assert s.inference_image == "registry.example/inference:1"
    assert s.peering == "tts"


def test_flags_win_over_env() -> None:
    s = config.parse(
        ["--metrics-port", "9100", "-n", "x"],
        {"TTS_OPERATOR_METRICS_PORT": "9090", "TTS_OPERATOR_NAMESPACES": "y"},
    )
    assert s.metrics_port == 9100
    assert s.namespaces == ("x",)


def test_all_namespaces_from_env() -> None:
    assert config.parse([], {"TTS_OPERATOR_ALL_NAMESPACES": "true"}).all_namespaces


def test_autoscaler_and_prometheus_from_env_or_flags() -> None:
    env = {"TTS_OPERATOR_AUTOSCALER": "keda", "TTS_OPERATOR_PROMETHEUS_URL": "http://p:9090"}
    settings = config.parse(["-A"], env)
    assert (settings.autoscaler, settings.prometheus_url) == ("keda", "http://p:9090")
    assert config.parse(["-A", "--autoscaler", "hpa"], env).autoscaler == "hpa"
    assert config.parse(["-A"], {}).autoscaler == "auto"


def test_voice_aliases_from_env_or_flag() -> None:
    env = {"TTS_OPERATOR_VOICE_ALIASES": "echo=anna, alloy=narrator"}
    assert config.parse(["-A"], env).voice_aliases == (("alloy", "narrator"), ("echo", "anna"))
    assert config.parse(["-A", "--voice-aliases", "nova=x"], env).voice_aliases == (("nova", "x"),)
    assert config.parse(["-A"], {}).voice_aliases == ()


@pytest.mark.parametrize(
    ("argv", "env", "needle"),
    [
        ([], {}, "say which namespaces"),
        (["-A"], {"TTS_OPERATOR_NAMESPACES": "a"}, "exclude each other"),
        (["-A", "-n", "a"], {}, "not allowed with argument"),
        (["-A", "--metrics-port", "70000"], {}, "outside 1..65535"),
        (
            ["-A"],
            {"TTS_OPERATOR_METRICS_PORT": "http"},
            "TTS_OPERATOR_METRICS_PORT='http' is not a port",
        ),
        (["-A"], {"TTS_OPERATOR_AUTOSCALER": "vpa"}, "TTS_OPERATOR_AUTOSCALER='vpa' is not one of"),
        (["-A", "--autoscaler", "vpa"], {}, "invalid choice"),
        (["-A", "--voice-aliases", "alloy"], {}, "expected ALIAS=VOICE"),
        (["-A"], {"TTS_OPERATOR_VOICE_ALIASES": "default=x"}, "built-in voice's own name"),
    ],
)
def test_bad_settings_exit_with_a_message(
    argv: list[str], env: dict[str, str], needle: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exc:
        config.parse(argv, env)
    assert exc.value.code == 2
    assert needle in capsys.readouterr().err
