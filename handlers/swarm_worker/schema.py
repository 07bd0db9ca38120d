"""Job input models, one per action, and `SwarmAction`, their union on `action`: the one list of
the worker's actions (the handler dispatches on it, the docs are generated from it). Legacy and
lease inputs ignore keys they do not know (clients of both extension generations send what they
send); `generate` and `models` reject them."""

from __future__ import annotations

from typing import Annotated, Any, Literal, Union, get_args

from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator

from common.swarmui import MODEL_SUBTYPES, T2IParams, params_for
from common.uploads.spec import UploadSpec


class _Tolerant(BaseModel):
    model_config = ConfigDict(extra="ignore")


class HoldInput(_Tolerant):
    """`wakeup` and `keepalive`: hold the worker `duration` seconds, checking SwarmUI every `interval`."""

    action: Literal["wakeup", "keepalive"] = Field(..., description="the action")
    duration: float = Field(180, ge=0, le=7 * 24 * 3600, description="seconds to hold the worker")
    interval: float = Field(30, gt=0, le=3600, description="seconds between SwarmUI checks")


class PlainInput(_Tolerant):
    """The actions that take no arguments (the legacy extension's `ready`, `health`, `shutdown`, and
    `status`); any other key is ignored, like the other legacy inputs."""

    action: Literal["ready", "health", "shutdown", "status"] = Field(..., description="the action")


class LeaseInput(_Tolerant):
    action: Literal["lease"] = Field(..., description="the action")
    idle_seconds: float | None = Field(None, ge=0, description="release after this long idle "
                                                               "(default SWARMUI_IDLE_SECONDS)")
    startup_grace_seconds: float | None = Field(None, ge=0, description="release when unused this long "
                                                                        "(default SWARMUI_STARTUP_GRACE_SECONDS)")
    max_lease_seconds: float | None = Field(None, ge=0, description="longest lease "
                                                                    "(default SWARMUI_MAX_LEASE_SECONDS)")


class ModelsInput(BaseModel):
    model_config = ConfigDict(extra="forbid")
    action: Literal["models"] = Field(..., description="the action")
    subtypes: list[Literal[MODEL_SUBTYPES]] = Field(default_factory=lambda: list(MODEL_SUBTYPES),  # type: ignore[valid-type]
                                                    min_length=1, description="model folders to list (default: all)")


class GenerateInput(BaseModel):
    """A SwarmUI generation: `params` is the GenerateText2Image body (text-to-image, or image-to-video
    when it names a `videomodel`); results come back inline when small, else uploaded per `output`.
    `init_image_url` fetches the init image on the worker (RunPod caps `/run` bodies at 10 MB)."""

    model_config = ConfigDict(extra="forbid")
    action: Literal["generate"] = Field(..., description="the action")
    init_image_url: str | None = Field(None, pattern=r"^(https?|s3|hf)://", description="becomes params.initimage")
    params: dict[str, Any] = Field(..., description="SwarmUI GenerateText2Image parameters")  # after init_image_url
    output: UploadSpec | None = Field(None, description="upload the outputs (else inline when small)")
    inline_max_bytes: int | None = Field(None, ge=0, description="inline results up to this total size")
    websocket: bool = Field(True, description="generate over SwarmUI's WebSocket route (no 100 s proxy limit)")
    timeout_seconds: float = Field(3600, gt=0, le=24 * 3600, description="interrupt the generation after this")

    @field_validator("params")
    @classmethod
    def _valid_params(cls, value: dict[str, Any], info: ValidationInfo) -> dict[str, Any]:
        body = dict(value)
        if info.data.get("init_image_url"):
            if body.get("initimage"):
                raise ValueError("give either init_image_url or params.initimage, not both")
            body["initimage"] = "fetched from init_image_url"
        params_for(body)  # raises a ValidationError naming the bad parameter
        return value

    def swarm_params(self, initimage: str | None = None) -> T2IParams:
        body = dict(self.params)
        if initimage is not None:
            body["initimage"] = initimage
        return params_for(body)


SwarmAction = Annotated[Union[LeaseInput, HoldInput, PlainInput, GenerateInput, ModelsInput],  # noqa: UP007
                        Field(discriminator="action")]
# action name -> its input model, in the union's order (what an unknown action's reply lists)
ACTION_MODELS: dict[str, type[BaseModel]] = {
    name: model for model in get_args(get_args(SwarmAction)[0])
    for name in get_args(model.model_fields["action"].annotation)}
ACTIONS = tuple(ACTION_MODELS)
