"""Request and response schemas of the HTTP API, and its one error shape.

`POST /v1/audio/speech` follows OpenAI's speech API: the official client's
fields (model, input, voice, response_format, speed, instructions,
stream_format) are accepted as it sends them. Extensions (seed, nfe_step,
cfg_strength) are optional. Fields OpenAI added that this server does not use
are accepted and logged, never an error.

`/v1/voices` and `/v1/jobs` are this project's own: their JSON is camelCase
(as the CRDs), and a job request with an unknown field is refused, so a typo
never silently changes what runs.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Discriminator,
    Field,
    Tag,
    field_validator,
    model_validator,
)
from pydantic.alias_generators import to_camel

from tts_inference.text import unicode_error

ResponseFormat = Literal["mp3", "opus", "aac", "flac", "wav", "pcm"]

#: OpenAI's speed range; F5-TTS's speed divides the duration it gives each chunk.
MIN_SPEED = 0.25
MAX_SPEED = 4.0
SSE_DEFAULT_FORMAT = "pcm"


class VoiceId(BaseModel):
    """The client's custom-voice object, ``{"id": name}``: the same as the name alone."""

    model_config = ConfigDict(extra="ignore")

    id: str = Field(min_length=1, max_length=64, description="A registered voice or an alias.")


class SpeechRequest(BaseModel):
    model_config = ConfigDict(extra="allow")

    model: str = Field(
        min_length=1, max_length=256, description="Any name; the endpoint serves one model."
    )
    input: str = Field(min_length=1, description="The text to speak.")
    voice: Annotated[str, Field(min_length=1, max_length=64)] | VoiceId = Field(
        description="A registered voice or an alias (OpenAI's names map to 'default' unless "
        'the server maps them elsewhere), as a string or as {"id": name}.'
    )
    response_format: ResponseFormat = "mp3"
    speed: float = Field(1.0, ge=MIN_SPEED, le=MAX_SPEED)
    instructions: str | None = Field(
        None,
        description="Accepted for compatibility; F5-TTS takes its style from the reference "
        "voice, so instructions do not change the audio.",
    )
    stream_format: Literal["audio", "sse"] | None = Field(
        None,
        description="audio: raw audio chunks; sse: text/event-stream of speech.audio.delta "
        "events (base64 audio, pcm unless response_format is given) and speech.audio.done.",
    )
    seed: int | None = Field(None, ge=0, le=2**32 - 1)
    nfe_step: int | None = Field(None, ge=1, le=64)
    cfg_strength: float | None = Field(None, ge=0.0, le=10.0)

    @field_validator("input")
    @classmethod
    def _encodable(cls, value: str) -> str:
        if why := unicode_error(value):
            raise ValueError(f"{why}: send the text as valid UTF-8")
        return value

    @property
    def voice_name(self) -> str:
        return self.voice if isinstance(self.voice, str) else self.voice.id

    @property
    def audio_format(self) -> str:
        """The format of the audio: as asked, or pcm for SSE events when none was asked."""
        if self.stream_format == "sse" and "response_format" not in self.model_fields_set:
            return SSE_DEFAULT_FORMAT
        return self.response_format

    def ignored_fields(self) -> list[str]:
        extra = list((self.model_extra or {}).keys())
        if self.instructions:
            extra.append("instructions")
        return extra


class SpeechUsage(BaseModel):
    """What a speech stream used: text characters in, audio frames (of 256 samples) out."""

    input_tokens: int
    output_tokens: int
    total_tokens: int


class SpeechAudioDelta(BaseModel):
    type: Literal["speech.audio.delta"] = "speech.audio.delta"
    audio: str = Field(description="base64 of the next bytes of audio in the stream's format.")


class SpeechAudioDone(BaseModel):
    type: Literal["speech.audio.done"] = "speech.audio.done"
    usage: SpeechUsage


class ErrorBody(BaseModel):
    message: str
    type: str
    param: str | None = None
    code: str | None = None


class ErrorResponse(BaseModel):
    error: ErrorBody


class SpeechError(ErrorResponse):
    """An SSE stream's last event when synthesis fails after the stream began."""

    type: Literal["error"] = "error"


def error_payload(
    message: str,
    *,
    type_: str = "invalid_request_error",
    param: str | None = None,
    code: str | None = None,
) -> dict[str, Any]:
    """The one JSON error shape every route answers with (OpenAI's)."""
    return ErrorResponse(
        error=ErrorBody(message=message, type=type_, param=param, code=code)
    ).model_dump()


class ModelCard(BaseModel):
    id: str
    object: Literal["model"] = "model"
    created: int = 0
    owned_by: str = "tts-operator"


class ModelList(BaseModel):
    object: Literal["list"] = "list"
    data: list[ModelCard]


# --------------------------------------------------------------------------- voices


class VoiceInfo(BaseModel):
    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True)

    object: Literal["voice"] = "voice"
    name: str
    text: str = ""
    seconds: float | None = None
    sample_rate: int | None = None
    sha256: str | None = None
    created_at: str | None = None
    builtin: bool = False
    aliases: list[str] = Field(
        default_factory=list, description="Other names that speak with this voice."
    )


class VoiceList(BaseModel):
    object: Literal["list"] = "list"
    data: list[VoiceInfo]


class VoiceDeleted(BaseModel):
    object: Literal["voice.deleted"] = "voice.deleted"
    name: str
    deleted: bool = True


# --------------------------------------------------------------------------- jobs

JobFormat = Literal["wav", "flac", "mp3", "opus"]
JOB_FORMATS: tuple[str, ...] = ("wav", "flac", "mp3", "opus")
JobState = Literal["queued", "running", "succeeded", "failed"]
TERMINAL_STATES: tuple[str, ...] = ("succeeded", "failed")


class _JobModel(BaseModel):
    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True, extra="forbid")


class JobOutput(_JobModel):
    uri: str = Field(
        min_length=6,
        max_length=1024,
        description="s3://bucket/key, or s3://bucket/prefix/ to write <prefix><job-id>.<format>.",
    )
    format: JobFormat | None = Field(
        default=None, description="wav, flac, mp3 or opus; default: the key's extension, else wav."
    )


class JobParams(_JobModel):
    speed: float = Field(default=1.0, ge=MIN_SPEED, le=MAX_SPEED)
    nfe_step: int | None = Field(default=None, ge=1, le=64)
    cfg_strength: float | None = Field(default=None, ge=0.0, le=10.0)
    seed: int | None = Field(default=None, ge=0, le=2**32 - 1)


class RefVoice(_JobModel):
    """A job's own reference clip instead of a registered voice."""

    ref_audio: str = Field(
        min_length=6,
        max_length=1024,
        description="s3://bucket/key of the reference clip (any format the server decodes).",
    )
    ref_text: str | None = Field(
        default=None,
        max_length=2000,
        description="The words spoken in the clip; without it the server transcribes the clip "
        "when it has a speech recognition model, else the job is refused.",
    )


def _voice_kind(value: Any) -> str:
    return "name" if isinstance(value, str) else "clip"


#: A job's voice: a registered voice's name, or a clip of its own. Errors name the branch
#: the value was read as ("voice.name: ..." or "voice.clip.refAudio: ..."), not both.
JobVoice = Annotated[
    Annotated[str, Field(min_length=1, max_length=64), Tag("name")]
    | Annotated[RefVoice, Tag("clip")],
    Discriminator(_voice_kind),
]


class JobRequest(_JobModel):
    text: str | None = Field(default=None, description="The text to speak (or textUri).")
    text_uri: str | None = Field(
        default=None,
        max_length=1024,
        description="s3://bucket/key of UTF-8 text in an allowed bucket.",
    )
    voice: JobVoice = Field(
        default="default",
        description="A registered voice's name, or {refAudio, refText?}: a clip of its own.",
    )
    output: JobOutput
    params: JobParams = Field(default_factory=lambda: JobParams())

    def voice_label(self) -> str:
        """The voice as a job's status names it: its name, or the reference clip's URI."""
        return self.voice if isinstance(self.voice, str) else self.voice.ref_audio

    @field_validator("text")
    @classmethod
    def _encodable(cls, value: str | None) -> str | None:
        if value is not None and (why := unicode_error(value)):
            raise ValueError(f"{why}: send the text as valid UTF-8")
        return value

    @model_validator(mode="after")
    def _one_text(self) -> JobRequest:
        if (self.text is None) == (self.text_uri is None):
            raise ValueError("give exactly one of text and textUri")
        if self.text is not None and not self.text.strip():
            raise ValueError("text is empty: give the text to speak")
        return self


class JobTimings(BaseModel):
    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True)

    queued_seconds: float | None = None
    fetch_seconds: float | None = None
    synthesis_seconds: float | None = None
    encode_seconds: float | None = None
    upload_seconds: float | None = None
    total_seconds: float | None = None


class JobStatus(BaseModel):
    """A job as GET /v1/jobs/{id} reports it; also the record kept in the bucket."""

    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True)

    object: Literal["job"] = "job"
    id: str
    state: JobState
    idempotency_key: str | None = None
    voice: str | None = None
    format: str | None = None
    output_uri: str | None = None
    audio_seconds: float | None = None
    rtf: float | None = Field(default=None, description="Job wall seconds per second of audio.")
    progress: float = 0.0
    chunks_done: int = 0
    chunks_total: int = 0
    timings: JobTimings = Field(default_factory=JobTimings)
    error: str | None = None
    cancelled: bool = False
    retryable: bool = Field(
        default=False,
        description="True when the job was interrupted: POST it again with the same key.",
    )
    attempts: int = 1
    created_at: str | None = None
    started_at: str | None = None
    completed_at: str | None = None
    updated_at: str | None = None
    owner: str | None = Field(default=None, description="The server process that runs the job.")
    fingerprint: str | None = Field(default=None, description="sha256 of the request.")
