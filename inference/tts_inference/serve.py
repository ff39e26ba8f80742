"""`tts-inference serve --model-dir DIR`: one server process per GPU, one model copy.

SIGTERM starts a drain: /readyz and new /v1 requests answer 503 (so the
Service stops sending traffic) while requests already running finish, up to
--drain-grace seconds; then the process exits. A second signal exits at once.
A model that fails to load exits the process non-zero with the reason.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import sys
from pathlib import Path
from types import FrameType

import uvicorn

from tts_inference.app import build_app
from tts_inference.engine.base import add_engine_arguments
from tts_inference.settings import ServerSettings, model_dir_problem
from tts_inference.state import ServerState
from tts_inference.storage.files import one_line, write_termination_log

log = logging.getLogger("tts_inference.serve")

API_KEY_ENV = "TTS_API_KEY"
VOICES_URI_ENV = "TTS_VOICES_URI"
JOBS_URI_ENV = "TTS_JOBS_URI"
ALLOWED_BUCKETS_ENV = "TTS_ALLOWED_BUCKETS"
ASR_MODEL_DIR_ENV = "TTS_ASR_MODEL_DIR"


class DrainingServer(uvicorn.Server):
    def __init__(
        self, config: uvicorn.Config, state: ServerState, termination_log: Path | None = None
    ) -> None:
        super().__init__(config)
        self.state = state
        self.termination_log = termination_log
        self.exit_code = 0
        self._drain: asyncio.Task[None] | None = None

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        if self.state.draining or self._drain is not None:
            super().handle_exit(sig, frame)  # second signal: stop now
            return
        self.state.draining = True
        self.state.metrics.ready.set(0)
        log.info("signal %s: draining %d request(s) in flight", sig, self.state.inflight)
        self._drain = asyncio.get_event_loop().create_task(self._drain_then_exit())

    async def _drain_then_exit(self) -> None:
        grace = self.state.settings.drain_grace
        try:
            await asyncio.wait_for(self.state.idle.wait(), grace)
        except TimeoutError:
            log.warning(
                "drain grace of %.0fs passed with %d request(s) in flight",
                grace,
                self.state.inflight,
            )
        self.should_exit = True

    def fail(self, message: str) -> None:
        """The model could not load: exit 1, leaving why where Kubernetes (and through it the
        operator's status) reads a container's termination message."""
        write_termination_log(self.termination_log, f"serve failed: {one_line(message)}")
        self.exit_code = 1
        self.should_exit = True


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--termination-log",
        type=Path,
        help="when the model cannot load, write why here, e.g. /dev/termination-log",
    )
    parser.add_argument(
        "--model-dir",
        required=True,
        type=Path,
        help="model folder (model.yaml, checkpoint, vocab, vocos/)",
    )
    parser.add_argument("--host", default="0.0.0.0", help="address to listen on (default 0.0.0.0)")
    parser.add_argument("--port", type=int, default=8000, help="port (default 8000)")
    parser.add_argument(
        "--cache-dir",
        type=Path,
        help="the cache volume: voices/ and the flash_attn install live here",
    )
    add_engine_arguments(parser, max_batch_help="most requests per batch on the device")
    parser.add_argument(
        "--max-wait-ms",
        type=float,
        default=10.0,
        help="longest a request waits for its batch to fill",
    )
    parser.add_argument(
        "--max-queue", type=int, default=64, help="requests held waiting before new ones get 429"
    )
    parser.add_argument(
        "--max-input-chars", type=int, default=4096, help="longest input text of one speech request"
    )
    parser.add_argument(
        "--max-body-bytes", type=int, default=1_000_000, help="largest request body"
    )
    parser.add_argument(
        "--request-timeout",
        type=float,
        default=300.0,
        help="seconds a request may wait in the queue",
    )
    parser.add_argument(
        "--drain-grace",
        type=float,
        default=30.0,
        help="seconds to finish in-flight requests on SIGTERM",
    )
    parser.add_argument("--nfe-step", type=int, default=32, help="default flow-matching steps")
    parser.add_argument("--cfg-strength", type=float, default=2.0, help="default guidance strength")
    parser.add_argument(
        "--model-name", help="the model id /v1/models reports (default: model.yaml's name)"
    )
    parser.add_argument(
        "--log-level", default="info", choices=["debug", "info", "warning", "error"]
    )
    bucket = parser.add_argument_group(
        "voices and jobs",
        "The bucket comes from AWS_ENDPOINT_URL, AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, AWS_REGION.",
    )
    bucket.add_argument(
        "--voices-uri",
        default=os.environ.get(VOICES_URI_ENV) or None,
        help=f"s3://bucket/voices/: where registered voices persist (env {VOICES_URI_ENV})",
    )
    bucket.add_argument(
        "--jobs-uri",
        default=os.environ.get(JOBS_URI_ENV) or None,
        help="s3://bucket/jobs/: job records, found by id after a restart "
        f"(default: jobs/ beside --voices-uri; env {JOBS_URI_ENV})",
    )
    bucket.add_argument(
        "--allowed-buckets",
        default=os.environ.get(ALLOWED_BUCKETS_ENV, ""),
        help="comma-separated buckets a job may read textUri from and write output to "
        f"(default: the --voices-uri bucket; env {ALLOWED_BUCKETS_ENV})",
    )
    bucket.add_argument(
        "--asr-model-dir",
        type=Path,
        default=os.environ.get(ASR_MODEL_DIR_ENV) or None,
        help="a Whisper model folder for voice uploads without text (default: a "
        f"models/*whisper*/ folder in --cache-dir, if any; env {ASR_MODEL_DIR_ENV})",
    )
    parser.add_argument(
        "--voice-alias",
        action="append",
        default=[],
        metavar="ALIAS=VOICE",
        help="a request for ALIAS speaks with VOICE; repeat or comma-separate (also env "
        "TTS_VOICE_ALIASES, which the flags override). OpenAI's voice names (alloy, ash, "
        "... cedar) map to 'default' unless mapped here",
    )
    bucket.add_argument(
        "--max-running-jobs", type=int, default=2, help="jobs synthesizing at once (default 2)"
    )
    bucket.add_argument(
        "--max-pending-jobs",
        type=int,
        default=256,
        help="jobs queued or running at once; one more gets 429 (default 256)",
    )
    bucket.add_argument(
        "--max-upload-mb",
        type=float,
        default=10.0,
        help="largest voice upload in MB (default 10)",
    )


def _model_name(model_dir: Path) -> str:
    try:
        import yaml

        from tts_inference.model_folder import CONFIG_NAME

        doc = yaml.safe_load((model_dir / CONFIG_NAME).read_text())
        return str(doc.get("name") or model_dir.name)
    except (OSError, ValueError, AttributeError):
        return model_dir.name


def run(args: argparse.Namespace) -> int:
    # The server never downloads: hub access is off before anything can import a hub client.
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    logging.basicConfig(
        level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    max_batch_ok = args.max_batch is None or 1 <= args.max_batch <= 256
    if not (max_batch_ok and args.max_queue >= 1 and 1 <= args.nfe_step <= 64):
        print(
            "error: --max-batch must be 1..256, --max-queue >= 1, --nfe-step 1..64", file=sys.stderr
        )
        return 2
    from tts_inference.storage.bucket import parse_uri

    allowed = tuple(b.strip() for b in args.allowed_buckets.split(",") if b.strip())
    try:
        for uri, flag in ((args.voices_uri, "--voices-uri"), (args.jobs_uri, "--jobs-uri")):
            if uri:
                parse_uri(uri, flag)
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if args.max_running_jobs < 1 or args.max_pending_jobs < 1:
        print("error: --max-running-jobs and --max-pending-jobs must be >= 1", file=sys.stderr)
        return 2
    if args.concurrent_batches is not None and args.concurrent_batches < 1:
        print("error: --concurrent-batches must be >= 1", file=sys.stderr)
        return 2
    from tts_inference.voices import ALIASES_ENV, parse_aliases

    try:
        aliases = parse_aliases([os.environ.get(ALIASES_ENV, ""), *args.voice_alias])
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if problem := model_dir_problem(args.model_dir, args.cache_dir):
        print(f"error: {problem}", file=sys.stderr)
        write_termination_log(args.termination_log, f"serve failed: {one_line(problem)}")
        return 2
    settings = ServerSettings(
        model_dir=args.model_dir,
        cache_dir=args.cache_dir,
        device=args.device,
        dtype=args.dtype,
        attn_backend=args.attn_backend,
        max_batch=args.max_batch,
        concurrent_batches=args.concurrent_batches,
        max_wait_ms=args.max_wait_ms,
        max_queue=args.max_queue,
        max_input_chars=args.max_input_chars,
        max_body_bytes=args.max_body_bytes,
        request_timeout=args.request_timeout,
        drain_grace=args.drain_grace,
        nfe_step=args.nfe_step,
        cfg_strength=args.cfg_strength,
        api_key=os.environ.get(API_KEY_ENV) or None,
        model_name=args.model_name or _model_name(args.model_dir),
        voices_uri=args.voices_uri,
        jobs_uri=args.jobs_uri,
        allowed_buckets=allowed,
        asr_model_dir=args.asr_model_dir,
        max_running_jobs=args.max_running_jobs,
        max_pending_jobs=args.max_pending_jobs,
        max_upload_bytes=int(args.max_upload_mb * 1000 * 1000),
        voice_aliases=aliases,
    )
    holder: list[DrainingServer] = []
    app = build_app(
        settings, on_failure=lambda message: holder[0].fail(message) if holder else None
    )
    config = uvicorn.Config(
        app,
        host=args.host,
        port=args.port,
        log_level=args.log_level,
        workers=1,
        timeout_graceful_shutdown=5,
    )
    server = DrainingServer(config, app.state.tts, args.termination_log)
    holder.append(server)
    server.run()
    return server.exit_code
