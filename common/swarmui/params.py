"""Typed SwarmUI generation parameters (the body of `GenerateText2Image`).

SwarmUI takes a flat map of parameter IDs (display names lowercased, non-letters dropped).
The fields below are the ones this project uses and checks; any other SwarmUI parameter
passes through unchanged, because SwarmUI has hundreds and extensions add more.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

VideoFormat = Literal["webp", "gif", "gif-hd", "webm", "h264-mp4", "h265-mp4", "prores"]


class T2IParams(BaseModel):
    """Text-to-image parameters. `images` is the only field SwarmUI requires."""

    model_config = ConfigDict(extra="allow", populate_by_name=True)

    images: int = Field(1, ge=1, le=64, description="number of outputs to generate")
    prompt: str | None = None
    negativeprompt: str | None = None
    model: str | None = Field(None, description="path relative to the model folder, e.g. OfficialStableDiffusion/sd_xl_base_1.0")
    width: int | None = Field(None, ge=64, le=16384)
    height: int | None = Field(None, ge=64, le=16384)
    steps: int | None = Field(None, ge=1, le=500)
    cfgscale: float | None = Field(None, ge=0, le=100)
    seed: int | None = Field(None, ge=-1)
    sampler: str | None = None
    scheduler: str | None = None
    loras: list[str] | str | None = None
    loraweights: list[float] | str | None = None
    donotsave: bool | None = Field(None, description="true: outputs come back as data: URLs and nothing is written")
    extra_metadata: dict[str, str] | None = None

    @model_validator(mode="before")
    @classmethod
    def _no_session_id(cls, data: Any) -> Any:
        if isinstance(data, dict) and "session_id" in data:
            raise ValueError("session_id: set by the client, not a generation parameter")
        return data

    def to_body(self) -> dict[str, Any]:
        """The JSON body SwarmUI expects, without unset fields."""
        return self.model_dump(exclude_none=True, by_alias=True)


class I2VParams(T2IParams):
    """Image-to-video: the init image is the first frame of a video model (Wan 2.2 style).

    `initimagecreativity` defaults to 0, which makes SwarmUI skip the image model and feed
    the init image straight to `videomodel`.
    """

    initimage: str = Field(..., min_length=1, description="data: URL, raw base64 or a JSON {data, filename} string")
    initimagecreativity: float = Field(0.0, ge=0, le=1)
    videomodel: str = Field(..., min_length=1, description="I2V model (Wan 2.2: the high-noise file)")
    videoswapmodel: str | None = Field(None, description="Wan 2.2 low-noise model")
    videoswappercent: float | None = Field(None, ge=0, le=1)
    videoframes: int | None = Field(None, ge=1, le=1000)
    videosteps: int | None = Field(None, ge=1, le=500)
    videocfg: float | None = Field(None, ge=0, le=100)
    videofps: int | None = Field(None, ge=1, le=240)
    videoformat: VideoFormat | None = None
    videoresolution: str | None = None


def params_for(body: dict[str, Any]) -> T2IParams:
    """Validate a raw parameter map: I2V when it names a `videomodel`, T2I otherwise."""
    cls = I2VParams if body.get("videomodel") else T2IParams
    return cls.model_validate(body)
