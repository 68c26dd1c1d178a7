"""The JSON bodies of ``POST /v1/sessions`` (docs/api.md); a WHIP offer gives the options as query parameters."""

from __future__ import annotations

from pydantic import BaseModel, Field


class SessionOptionsBody(BaseModel):
    size: int | None = None
    fps: int | None = None
    backend: str | None = None
    background: str = "original"
    audio_source: str = "mic"
    name: str | None = None
    seed: int | None = None


class OfferBody(BaseModel):
    sdp: str
    type: str = "offer"
    avatar_id: str | None = None
    avatar: str | None = None
    options: SessionOptionsBody = Field(default_factory=SessionOptionsBody)
