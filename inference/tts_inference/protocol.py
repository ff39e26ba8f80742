"""Request and response schemas of the HTTP API, and its one error shape.

`POST /v1/audio/speech` follows OpenAI's speech API: the official client's
fields (model, input, voice, response_format, speed, instructions,
stream_format) are accepted as it sends them. Extensions (seed, nfe_step,
cfg_strength) are optional. Fields OpenAI added that this server does not use
are accepted and logged, never an error.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

ResponseFormat = Literal["mp3", "opus", "aac", "flac", "wav", "pcm"]
RESPONSE_FORMATS: tuple[str, ...] = ("mp3", "opus", "aac", "flac", "wav", "pcm")

MIN_SPEED = 0.3
MAX_SPEED = 3.0


class SpeechRequest(BaseModel):
    model_config = ConfigDict(extra="allow")

    model: str = Field(
        min_length=1, max_length=256, description="Any name; the endpoint serves one model."
    )
    input: str = Field(min_length=1, description="The text to speak.")
    voice: str = Field(
        min_length=1, max_length=64, description="A registered voice; 'default' always exists."
    )
    response_format: ResponseFormat = "mp3"
    speed: float = Field(1.0, ge=MIN_SPEED, le=MAX_SPEED)
    instructions: str | None = Field(
        None, description="Accepted for compatibility; F5-TTS takes style from the voice."
    )
    stream_format: Literal["audio"] | None = Field(
        None, description="Only raw audio streaming is offered."
    )
    seed: int | None = Field(None, ge=0, le=2**32 - 1)
    nfe_step: int | None = Field(None, ge=1, le=64)
    cfg_strength: float | None = Field(None, ge=0.0, le=10.0)

    def ignored_fields(self) -> list[str]:
        extra = list((self.model_extra or {}).keys())
        if self.instructions:
            extra.append("instructions")
        return extra


class ErrorBody(BaseModel):
    message: str
    type: str
    param: str | None = None
    code: str | None = None


class ErrorResponse(BaseModel):
    error: ErrorBody


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
