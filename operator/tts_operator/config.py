"""Operator settings from flags and TTS_OPERATOR_* environment variables.

Flags win over the environment, so the chart can pass everything as env and a
person can still override one setting on the command line.
"""

from __future__ import annotations

import argparse
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from tts_operator import constants as c

ENV_PREFIX = "TTS_OPERATOR_"
LOG_FORMATS = ("plain", "json")


@dataclass(frozen=True)
class Settings:
    namespaces: tuple[str, ...] = ()
    all_namespaces: bool = False
    metrics_port: int = 8080
    health_port: int = 8081
    peering: str | None = None
    inference_image: str = "tts-operator/inference:0.1.0"
    image_pull_policy: str = "IfNotPresent"
    log_format: str = "plain"
    # How the operator reaches an endpoint's API; {service}, {namespace} and {port} are filled in.
    endpoint_url_template: str = "http://{service}.{namespace}.svc:{port}"
    # Which engine scales endpoints with spec.autoscaling: auto (KEDA when its CRDs are
    # installed, else a HorizontalPodAutoscaler), keda or hpa.
    autoscaler: str = "auto"
    # The Prometheus that KEDA's triggers query.
    prometheus_url: str = c.DEFAULT_PROMETHEUS_URL
    # Voice aliases every endpoint's server gets (alias, voice), under each endpoint's own.
    voice_aliases: tuple[tuple[str, str], ...] = ()


AUTOSCALERS = ("auto", "keda", "hpa")


_VOICE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]{0,63}$")


def parse_voice_aliases(raw: str) -> tuple[tuple[str, str], ...]:
    """``alias=voice,...`` as pairs; ValueError names the item that is not one."""
    pairs: dict[str, str] = {}
    for item in filter(None, (part.strip() for part in raw.split(","))):
        alias, sep, voice = (s.strip() for s in item.partition("="))
        if not sep or not _VOICE_NAME.match(alias) or not _VOICE_NAME.match(voice):
            raise ValueError(
                f"voice alias {item!r}: expected ALIAS=VOICE, names of 1 to 64 "
                "letters, digits, '-' or '_'"
            )
        if alias == "default":
            raise ValueError(f"voice alias {item!r}: 'default' is the built-in voice's own name")
        pairs[alias] = voice
    return tuple(sorted(pairs.items()))


def _bool(value: str) -> bool:
    return value.strip().lower() in {"1", "true", "yes", "on"}


def _port(value: str) -> int:
    port = int(value)
    if not 0 < port < 65536:
        raise argparse.ArgumentTypeError(f"port {value} is outside 1..65535")
    return port


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="tts-operator",
        description=(
            "Run the tts-operator: reconcile TTSEndpoint and TTSJob resources in the "
            "cluster that KUBECONFIG names, or the in-cluster service account's."
        ),
    )
    scope = parser.add_mutually_exclusive_group()
    scope.add_argument(
        "--namespace",
        "-n",
        action="append",
        dest="namespaces",
        metavar="NS",
        help="watch this namespace (repeat for several; env TTS_OPERATOR_NAMESPACES, comma-separated)",
    )
    scope.add_argument(
        "--all-namespaces",
        "-A",
        action="store_true",
        default=None,
        help="watch every namespace (env TTS_OPERATOR_ALL_NAMESPACES=true)",
    )
    parser.add_argument("--metrics-port", type=_port, help="port of /metrics (default 8080)")
    parser.add_argument(
        "--health-port", type=_port, help="port of the liveness endpoint /healthz (default 8081)"
    )
    parser.add_argument(
        "--peering",
        help="Kopf peering name, so that only one of several operator replicas acts at a time",
    )
    parser.add_argument(
        "--inference-image", help="default inference image for pods the operator makes"
    )
    parser.add_argument(
        "--log-format",
        choices=LOG_FORMATS,
        help="plain text, or json: one JSON object per line (default plain; env TTS_OPERATOR_LOG_FORMAT)",
    )
    parser.add_argument(
        "--image-pull-policy",
        choices=["Always", "IfNotPresent", "Never"],
        help="default pull policy of the inference image",
    )
    parser.add_argument(
        "--autoscaler",
        choices=AUTOSCALERS,
        help="what scales endpoints with spec.autoscaling (default auto: KEDA when installed, else an HPA)",
    )
    parser.add_argument(
        "--prometheus-url",
        help="the Prometheus KEDA's triggers query (env TTS_OPERATOR_PROMETHEUS_URL)",
    )
    parser.add_argument(
        "--voice-aliases",
        metavar="ALIAS=VOICE,...",
        help="voice aliases every endpoint's server gets; an endpoint's spec.voiceAliases "
        "wins per alias (env TTS_OPERATOR_VOICE_ALIASES)",
    )
    parser.add_argument(
        "--endpoint-url-template",
        help="how to reach an endpoint's API (default http://{service}.{namespace}.svc:{port})",
    )
    return parser


def parse(argv: Sequence[str] | None, env: Mapping[str, str]) -> Settings:
    """Settings from ``argv`` over ``env``; errors exit with argparse's message."""
    parser = build_parser()
    args = parser.parse_args(argv)

    def from_env(name: str) -> str | None:
        value = env.get(ENV_PREFIX + name)
        return value if value not in (None, "") else None

    namespaces: tuple[str, ...]
    if args.namespaces:
        namespaces = tuple(args.namespaces)
    else:
        raw = from_env("NAMESPACES") or ""
        namespaces = tuple(ns.strip() for ns in raw.split(",") if ns.strip())
    all_ns = (
        args.all_namespaces
        if args.all_namespaces is not None
        else _bool(from_env("ALL_NAMESPACES") or "")
    )
    if args.namespaces:
        all_ns = False
    if all_ns and namespaces:
        parser.error("--all-namespaces and --namespace/TTS_OPERATOR_NAMESPACES exclude each other")
    if not all_ns and not namespaces:
        parser.error(
            "say which namespaces to watch: --namespace NS (repeatable) or --all-namespaces"
        )

    def port(flag: int | None, name: str, default: int) -> int:
        if flag is not None:
            return flag
        raw = from_env(name)
        try:
            return _port(raw) if raw else default
        except (ValueError, argparse.ArgumentTypeError):
            parser.error(f"{ENV_PREFIX}{name}={raw!r} is not a port number")

    defaults = Settings()
    log_format = args.log_format or from_env("LOG_FORMAT") or defaults.log_format
    if log_format not in LOG_FORMATS:
        parser.error(
            f"{ENV_PREFIX}LOG_FORMAT={log_format!r} is not a log format: use one of {', '.join(LOG_FORMATS)}"
        )
    autoscaler = args.autoscaler or from_env("AUTOSCALER") or defaults.autoscaler
    if autoscaler not in AUTOSCALERS:
        parser.error(
            f"{ENV_PREFIX}AUTOSCALER={autoscaler!r} is not one of {', '.join(AUTOSCALERS)}"
        )
    try:
        voice_aliases = parse_voice_aliases(args.voice_aliases or from_env("VOICE_ALIASES") or "")
    except ValueError as exc:
        parser.error(str(exc))
    return Settings(
        namespaces=namespaces,
        voice_aliases=voice_aliases,
        autoscaler=autoscaler,
        prometheus_url=args.prometheus_url or from_env("PROMETHEUS_URL") or defaults.prometheus_url,
        all_namespaces=all_ns,
        metrics_port=port(args.metrics_port, "METRICS_PORT", defaults.metrics_port),
        health_port=port(args.health_port, "HEALTH_PORT", defaults.health_port),
        peering=args.peering or from_env("PEERING"),
        inference_image=args.inference_image
        or from_env("INFERENCE_IMAGE")
        or defaults.inference_image,
        log_format=log_format,
        image_pull_policy=args.image_pull_policy
        or from_env("IMAGE_PULL_POLICY")
        or defaults.image_pull_policy,
        endpoint_url_template=args.endpoint_url_template
        or from_env("ENDPOINT_URL_TEMPLATE")
        or defaults.endpoint_url_template,
    )
