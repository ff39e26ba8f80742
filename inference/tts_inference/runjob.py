"""`tts-inference run-job`: one batch TTSJob pod, through the server's own job pipeline.

The operator runs this for a TTSJob without an endpoint. It builds what the
server builds (the engine, the batching queue, the voices, the bucket) and runs
the job with the server's ``JobManager``: the same text splitting, per-chunk
seeds (seed + i), JOB lane, cross-fade, encoding, whole-object upload, result
record beside the output and S3 error handling. So the output of run-job and
of POST /v1/jobs for one request are the same.

Order of work: the request is validated, the output bucket probed, an earlier
run's output looked for (found: nothing runs again, and no model is loaded),
the text and the voice (or reference clip) fetched, and only then is the model
loaded. A bad input therefore fails in about a second.

Job id and output name: the NAME of ``--job-id NAMESPACE/NAME`` (a Kubernetes
name is a safe key), or, when NAME is not a valid Kubernetes name,
``sha256("tts-job\\0" + job-id)[:32]`` as the server derives ids from an
Idempotency-Key. An output ending in "/" becomes ``<prefix><id>.<format>``.

Parts (an Indexed Job, ``--part-count N``): see ``tts_inference.jobs``; this
pod is part ``--part-index`` (default: env JOB_COMPLETION_INDEX, else 0).

Outcome: on success the last stdout line, and the termination log, hold one
JSON summary (see ``summary``). On failure the termination log holds one line,
``run-job failed: <what is wrong>``, and the exit code is 2 when the input is
wrong (no retry can fix it: unknown voice, bad or missing object, 403, empty
or too long text, undecodable reference clip, missing output bucket) and 1 for
anything else (possibly transient: the bucket unreachable, a 5xx, the device).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import re
import sys
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from tts_inference.engine.base import Engine, add_engine_arguments
from tts_inference.errors import BadRequest, Unavailable
from tts_inference.jobs import (
    Job,
    JobFailed,
    job_id_for,
    part_uri,
)
from tts_inference.metrics import ServerMetrics
from tts_inference.protocol import JOB_FORMATS, JobRequest, JobStatus
from tts_inference.runtime import default_engine, default_transcriber, no_transcriber, open_runtime
from tts_inference.settings import ServerSettings, model_dir_problem
from tts_inference.storage.bucket import PERMANENT_EXIT, parse_uri
from tts_inference.storage.files import one_line, write_termination_log
from tts_inference.voices import ALIASES_ENV, parse_aliases

log = logging.getLogger("tts_inference.runjob")

EXIT_FAILED = 1  # possibly transient: the Job may retry the pod
EXIT_PERMANENT = PERMANENT_EXIT  # the input is wrong: the Job fails without retrying
JOB_INDEX_ENV = "JOB_COMPLETION_INDEX"
VOICES_URI_ENV = "TTS_VOICES_URI"
TERMINATION_LIMIT = 4096  # bytes Kubernetes keeps of a termination message
_KUBE_NAME = re.compile(r"^[a-z0-9]([-a-z0-9.]{0,251}[a-z0-9])?$")


class RunJobError(Exception):
    """The job failed; ``code`` is the exit code (2: wrong input, 1: anything else)."""

    def __init__(self, message: str, code: int = EXIT_FAILED) -> None:
        super().__init__(message)
        self.code = code


def _aliases() -> dict[str, str]:
    """Voice aliases as the server takes them from its environment (OpenAI's names by default)."""
    try:
        return parse_aliases([os.environ.get(ALIASES_ENV, "")], ALIASES_ENV)
    except ValueError as exc:
        raise RunJobError(str(exc), EXIT_PERMANENT) from None


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--model-dir", required=True, type=Path, help="the synced model folder (model.yaml, ...)"
    )
    parser.add_argument(
        "--cache-dir",
        type=Path,
        help="the cache volume: voices and prepared reference clips are cached here",
    )
    text = parser.add_mutually_exclusive_group(required=True)
    text.add_argument("--text", help="the text to speak")
    text.add_argument("--text-uri", help="s3://bucket/key of UTF-8 text to speak")
    voice = parser.add_mutually_exclusive_group()
    voice.add_argument("--voice", help="a registered voice (default: 'default', built in)")
    voice.add_argument("--ref-audio", help="s3://bucket/key of a reference clip to speak like")
    parser.add_argument(
        "--ref-text",
        help="the words spoken in --ref-audio (default: transcribed by an ASR model in the "
        "cache; without one the job fails)",
    )
    parser.add_argument(
        "--output",
        required=True,
        help="s3://bucket/key, or s3://bucket/prefix/ to write <prefix><job-name>.<format>",
    )
    parser.add_argument(
        "--format",
        choices=JOB_FORMATS,
        help="audio format (default: the output key's extension, else wav)",
    )
    parser.add_argument(
        "--job-id", required=True, help="NAMESPACE/NAME of the TTSJob (names the output)"
    )
    parser.add_argument("--speed", type=float, help="speaking speed, 0.25 to 4 (default 1)")
    parser.add_argument("--nfe-step", type=int, help="flow-matching steps, 1 to 64 (default 32)")
    parser.add_argument("--cfg-strength", type=float, help="guidance strength (default 2)")
    parser.add_argument("--seed", type=int, help="seed of the first chunk; chunk i gets seed + i")
    parser.add_argument(
        "--part-count",
        type=int,
        default=1,
        help="pods the job is split over (an Indexed Job's completions; default 1)",
    )
    parser.add_argument(
        "--part-index",
        type=int,
        help=f"this pod's part, 0 to N-1 (default: env {JOB_INDEX_ENV}, else 0)",
    )
    parser.add_argument(
        "--termination-log",
        type=Path,
        help="write the summary (or the failure) here, e.g. /dev/termination-log",
    )
    parser.add_argument(
        "--voices-uri",
        default=os.environ.get(VOICES_URI_ENV) or None,
        help="s3://bucket/voices/ where registered voices live "
        f"(default: env {VOICES_URI_ENV}, else voices/ in the output's bucket)",
    )
    add_engine_arguments(parser, max_batch_help="most chunks per batch on the device")
    parser.add_argument(
        "--s3-max-attempts",
        type=int,
        default=5,
        help="attempts per bucket request before a failure counts (default 5)",
    )
    parser.add_argument(
        "--log-level", default="info", choices=["debug", "info", "warning", "error"]
    )


# --------------------------------------------------------------------------- the request


def job_id_from(job_id: str) -> str:
    """The id that names the output: NAME of NAMESPACE/NAME, or a digest when NAME is unusable."""
    name = job_id.rsplit("/", 1)[-1]
    return name if _KUBE_NAME.match(name) else job_id_for(job_id)


def _part(args: argparse.Namespace) -> tuple[int, int]:
    parts = args.part_count
    if parts < 1:
        raise RunJobError(f"--part-count must be >= 1, got {parts}", EXIT_PERMANENT)
    index = args.part_index
    if index is None:
        raw = os.environ.get(JOB_INDEX_ENV, "").strip() or "0"
        try:
            index = int(raw)
        except ValueError:
            raise RunJobError(f"{JOB_INDEX_ENV}={raw!r} is not a number", EXIT_PERMANENT) from None
    if not 0 <= index < parts:
        raise RunJobError(
            f"part index {index} is outside 0 to {parts - 1} (--part-count {parts})",
            EXIT_PERMANENT,
        )
    return index, parts


def _request(args: argparse.Namespace) -> JobRequest:
    """The POST /v1/jobs body this command line stands for."""
    if args.ref_text is not None and args.ref_audio is None:
        raise RunJobError("--ref-text needs --ref-audio", EXIT_PERMANENT)
    voice: Any = args.voice or "default"
    if args.ref_audio is not None:
        voice = {"refAudio": args.ref_audio}
        if args.ref_text:
            voice["refText"] = args.ref_text
    params = {
        key: value
        for key, value in (
            ("speed", args.speed),
            ("nfeStep", args.nfe_step),
            ("cfgStrength", args.cfg_strength),
            ("seed", args.seed),
        )
        if value is not None
    }
    body: dict[str, Any] = {
        "voice": voice,
        "output": {"uri": args.output, **({"format": args.format} if args.format else {})},
        "params": params,
    }
    if args.text_uri is not None:
        body["textUri"] = args.text_uri
    else:
        body["text"] = args.text
    try:
        return JobRequest.model_validate(body)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first.get("loc", ()))
        message = first.get("msg", "invalid request").removeprefix("Value error, ")
        raise RunJobError(f"{where}: {message}" if where else message, EXIT_PERMANENT) from None


def _buckets(req: JobRequest) -> tuple[str, ...]:
    """Every bucket this command line names: a pod may use all of them."""
    uris = [("--output", req.output.uri)]
    if req.text_uri is not None:
        uris.append(("--text-uri", req.text_uri))
    if not isinstance(req.voice, str):
        uris.append(("--ref-audio", req.voice.ref_audio))
    buckets = []
    for flag, uri in uris:
        try:
            buckets.append(parse_uri(uri, flag).bucket)
        except ValueError as exc:
            raise RunJobError(str(exc), EXIT_PERMANENT) from None
    return tuple(dict.fromkeys(buckets))


# --------------------------------------------------------------------------- the outcome


def summary(job: Job, done: JobStatus | None = None) -> dict[str, Any]:
    """The one JSON line a pod leaves: the output, or (joined false) the part it uploaded."""
    status = done or job.status
    if not job.joined:
        return {
            "outputUri": status.output_uri,
            "chunks": job.chunks_all,
            "part": job.part,
            "parts": job.parts,
            "joined": False,
            "partUri": str(part_uri(job.output, job.part, job.parts)),
        }
    chunks = job.chunks_all if job.parts > 1 else status.chunks_total
    return {
        "outputUri": status.output_uri,
        "audioSeconds": status.audio_seconds,
        "rtf": status.rtf,
        "chunks": chunks or status.chunks_total,
        "part": job.part,
        "parts": job.parts,
        "joined": True,
    }


def _failed(args: argparse.Namespace, message: str, code: int) -> int:
    line = f"run-job failed: {one_line(message)}"
    print(f"error: {line}", file=sys.stderr, flush=True)
    write_termination_log(args.termination_log, line)
    return code


# --------------------------------------------------------------------------- running


def _settings(
    args: argparse.Namespace, voices_uri: str, buckets: tuple[str, ...]
) -> ServerSettings:
    """The server's settings for this one job: its buckets, one job at a time, no record index."""
    return ServerSettings(
        model_dir=args.model_dir,
        cache_dir=args.cache_dir,
        device=args.device,
        dtype=args.dtype,
        attn_backend=args.attn_backend,
        max_batch=args.max_batch,
        concurrent_batches=args.concurrent_batches,
        voices_uri=voices_uri,
        allowed_buckets=buckets,
        max_running_jobs=1,
        s3_max_attempts=args.s3_max_attempts,
        voice_aliases=_aliases(),
        job_records=False,
    )


def _checked_engine(settings: ServerSettings) -> Engine:
    """The server's engine, once the model folder checks out."""
    if problem := model_dir_problem(settings.model_dir, settings.cache_dir):
        raise RunJobError(problem)
    return default_engine(settings)


async def execute(args: argparse.Namespace) -> dict[str, Any]:
    """Run the job the arguments describe; the summary, or RunJobError."""
    part, parts = _part(args)
    req = _request(args)
    buckets = _buckets(req)
    voices_uri = args.voices_uri or f"s3://{buckets[0]}/voices/"
    try:
        parse_uri(voices_uri, "--voices-uri")
    except ValueError as exc:
        raise RunJobError(str(exc), EXIT_PERMANENT) from None
    concurrent = args.concurrent_batches
    if (
        (args.max_batch is not None and args.max_batch < 1)
        or args.s3_max_attempts < 1
        or (concurrent is not None and concurrent < 1)
    ):
        raise RunJobError(
            "--max-batch, --concurrent-batches and --s3-max-attempts must be >= 1", EXIT_PERMANENT
        )
    settings = _settings(args, voices_uri, buckets)
    # A reference clip without text is transcribed; a named voice needs no ASR.
    transcriber = default_transcriber if not isinstance(req.voice, str) else no_transcriber
    async with open_runtime(settings, ServerMetrics(), transcriber) as runtime:
        manager = runtime.jobs
        try:
            job = manager.prepare(
                req, args.job_id, job_id=job_id_from(args.job_id), part=part, parts=parts
            )
        except BadRequest as exc:
            raise RunJobError(str(exc), EXIT_PERMANENT) from None
        log.info(
            "job %s (%s): part %d of %d -> %s", job.status.id, args.job_id, part, parts, job.output
        )
        try:
            await asyncio.to_thread(manager.check_output, job)
            done = await manager.finished(job)
            if done is not None:
                log.info("job %s: %s exists for this request; nothing to do", done.id, job.output)
                if parts > 1:
                    await asyncio.to_thread(manager.delete_parts, job.output)
                job.chunks_all = done.chunks_total
                return summary(job, done)
            await manager.gather(job)
        except JobFailed as exc:
            raise RunJobError(str(exc), EXIT_PERMANENT if exc.permanent else EXIT_FAILED) from None
        except BadRequest as exc:
            raise RunJobError(str(exc), EXIT_PERMANENT) from None
        except Unavailable as exc:
            raise RunJobError(str(exc), EXIT_FAILED) from None
        if parts == 1 or job.part_head is None:  # a part already made needs no model
            await runtime.load(_checked_engine)
        await manager.run(job)
    status = job.status
    if status.state != "succeeded":
        code = EXIT_PERMANENT if job.permanent else EXIT_FAILED
        raise RunJobError(status.error or "the job failed", code)
    return summary(job)


def run(args: argparse.Namespace) -> int:
    # A job pod never downloads a model: hub access is off before anything imports a hub client.
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    logging.basicConfig(
        level=args.log_level.upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    try:
        result = asyncio.run(execute(args))
    except RunJobError as exc:
        return _failed(args, str(exc), exc.code)
    except Exception as exc:  # the device, the environment, a bug: a retry may help
        log.exception("run-job failed")
        return _failed(args, f"{type(exc).__name__}: {exc}", EXIT_FAILED)
    line = json.dumps(result)
    if len(line.encode()) > TERMINATION_LIMIT:  # URIs are bounded; this only guards the limit
        line = json.dumps({k: v for k, v in result.items() if k != "partUri"})
    print(line, flush=True)
    write_termination_log(args.termination_log, line)
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="tts-inference run-job")
    add_arguments(parser)
    return run(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
