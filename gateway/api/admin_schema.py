"""Wire types of the operator API (/admin/v1): request bodies, strict (an unknown field is a 400)."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from gateway.config import Task
from gateway.deployments.records import AclRule, Endpoint, Visibility, cidr

_ID = r"^[A-Za-z0-9][A-Za-z0-9_.:/-]{0,127}$"
MAX_ENDPOINTS, MAX_ACLS = 8, 256
ORDERS = ("created_at_asc", "created_at_desc", "name_asc", "name_desc")


class LimitsPatch(BaseModel):
    model_config = ConfigDict(extra="forbid")

    max_in_flight: int | None = Field(default=None, ge=1, description="requests sent upstream at once (null: no cap)")
    max_queue: int | None = Field(default=None, ge=0, description="requests that may wait for a slot; more get 503")
    queue_timeout: float | None = Field(default=None, gt=0, description="seconds a request may wait for a slot")
    max_output_tokens: int | None = Field(default=None, ge=1, description="largest max_tokens a request may ask")
    context_length: int | None = Field(default=None, ge=1, description="prompt + output limit")


class EndpointSpec(BaseModel):
    model_config = ConfigDict(extra="forbid")

    visibility: Visibility = Field(default="public", description="public listener, or only the private one")
    disable_auth: bool = Field(default=False, description="true: callers need no API key")

    def record(self) -> Endpoint:
        return Endpoint(visibility=self.visibility, disable_auth=self.disable_auth)


class AclSpec(BaseModel):
    model_config = ConfigDict(extra="forbid")

    ip: str = Field(description="an address or a CIDR network allowed to call the deployment")
    description: str = Field(default="", max_length=256)

    @field_validator("ip")
    @classmethod
    def _network(cls, ip: str) -> str:
        return cidr(ip)

    def record(self) -> AclRule:
        return AclRule(ip=self.ip, description=self.description)


class AclList(BaseModel):
    model_config = ConfigDict(extra="forbid")

    acls: list[AclSpec] = Field(max_length=MAX_ACLS)


class DeploymentCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str = Field(pattern=_ID, description="unique; also the OpenAI `model` id unless model_id is given")
    model: str = Field(pattern=_ID, description="the Triton model to load (see GET /admin/v1/models)")
    model_id: str | None = Field(default=None, pattern=_ID, description="the OpenAI `model` id it is served under")
    task: Task = "generate"
    tokenizer: str | None = Field(
        default=None, description="directory with tokenizer.json (default: the one of a configured model of that name)"
    )
    upstreams: list[str] = Field(default_factory=list, description="Triton servers to use, in order (default: all)")
    upstream_groups: list[str] = Field(
        default_factory=list,
        description="upstream groups to use, in order of preference: requests go to the first group with a"
        " server free, else the next (with `upstreams` too: only those of the groups' servers)",
    )
    min_size: int = Field(default=1, ge=1, le=64, description="upstreams that must hold the model for it to serve")
    max_size: int | None = Field(default=None, ge=1, le=64, description="upstreams to load it on (default: min_size)")
    limits: LimitsPatch = Field(default_factory=LimitsPatch)
    tags: list[str] = Field(default_factory=list, max_length=64)
    endpoints: list[EndpointSpec] = Field(
        default_factory=lambda: [EndpointSpec()], min_length=1, max_length=MAX_ENDPOINTS
    )
    acls: list[AclSpec] = Field(default_factory=list, max_length=MAX_ACLS)
    config: dict[str, object] | None = Field(
        default=None, description="a Triton model config (JSON) to load the model with instead of its config.pbtxt"
    )


class DeploymentPatch(BaseModel):
    model_config = ConfigDict(extra="forbid")

    tags: list[str] | None = Field(default=None, max_length=64)
    min_size: int | None = Field(default=None, ge=1, le=64)
    max_size: int | None = Field(default=None, ge=1, le=64)
    limits: LimitsPatch | None = None


class ListQuery(BaseModel):
    model_config = ConfigDict(extra="forbid")

    page: int = Field(default=1, ge=1)
    per_page: int = Field(default=50, ge=1, le=100)
    name: str | None = None
    tag: str | None = None
    status: str | None = None
    order_by: Literal["created_at_asc", "created_at_desc", "name_asc", "name_desc"] = "created_at_asc"
