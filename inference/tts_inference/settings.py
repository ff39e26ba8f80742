"""ServerSettings: what a server or a run-job pod is configured with, and the model folder check.

Plain data with no side effects: ``serve`` fills it from flags and the
environment, ``run-job`` from its own flags, and ``runtime.open_runtime``
builds everything from it in one place.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from tts_inference.model_folder import CONFIG_NAME, known_names
from tts_inference.storage.bucket import S3Uri, parse_uri


@dataclass(frozen=True)
class ServerSettings:
    model_dir: Path
    cache_dir: Path | None = None
    device: str | None = None
    dtype: str = "auto"
    attn_backend: str = "auto"
    max_batch: int | None = None  # None: the engine's own (8 on CUDA, 1 on a CPU)
    concurrent_batches: int | None = None
    max_wait_ms: float = 10.0
    max_queue: int = 64
    max_input_chars: int = 4096
    max_body_bytes: int = 1_000_000
    request_timeout: float = 300.0
    drain_grace: float = 30.0
    nfe_step: int = 32
    cfg_strength: float = 2.0
    api_key: str | None = None
    model_name: str = "f5-tts"
    # Voices and jobs (the bucket)
    voices_uri: str | None = None
    jobs_uri: str | None = None
    allowed_buckets: tuple[str, ...] = ()
    asr_model_dir: Path | None = None
    max_upload_bytes: int = 10 * 1000 * 1000
    max_voice_seconds: float = 300.0
    max_running_jobs: int = 2
    max_pending_jobs: int = 256
    max_job_chars: int = 2_000_000
    s3_max_attempts: int = 8
    upload_part_bytes: int = 8 * 1024 * 1024
    upload_attempts: int = 3
    retry_backoff: float = 1.0
    job_heartbeat_seconds: float = 10.0
    # alias -> voice; None: OpenAI's voice names speak with the built-in voice.
    voice_aliases: Mapping[str, str] | None = None
    # False: no record index under --jobs-uri (a run-job pod leaves its record beside the output).
    job_records: bool = True

    def records_uri(self) -> S3Uri | None:
        """Where job records live: --jobs-uri, else jobs/ beside the voices prefix."""
        if not self.job_records:
            return None
        if self.jobs_uri:
            return parse_uri(self.jobs_uri, "--jobs-uri")
        if not self.voices_uri:
            return None
        voices = parse_uri(self.voices_uri, "--voices-uri")
        parent = voices.prefix.rstrip("/").rpartition("/")[0]
        return S3Uri(voices.bucket, f"{parent}/jobs/" if parent else "jobs/")

    def buckets(self) -> tuple[str, ...]:
        """Buckets jobs may read text from and write output to (the voices bucket by default)."""
        if self.allowed_buckets:
            return self.allowed_buckets
        return (parse_uri(self.voices_uri, "--voices-uri").bucket,) if self.voices_uri else ()


def model_dir_problem(model_dir: Path, cache_dir: Path | None) -> str | None:
    """Before a process loads the engine: what is wrong with --model-dir, or None. Also puts
    a flash_attn the init container installed into the cache on sys.path (never pip here)."""
    if not (model_dir / CONFIG_NAME).exists():
        return (
            f"{model_dir / CONFIG_NAME} not found: --model-dir must be a synced model folder "
            f"(tts-inference publish writes {CONFIG_NAME} into a revision of {known_names()} "
            "mirrored from the hub; publish a new revision with it)"
        )
    if cache_dir is not None:
        from tts_inference.flash_attn import use_installed

        use_installed(cache_dir)
    return None
