"""What the gateway stores about a deployment (internal records; the admin API's wire types are in
:mod:`gateway.api.admin_schema`).

A deployment serves one Triton model (``triton_model``) under an OpenAI model id (``model_id``) on
between ``min_size`` and ``max_size`` upstreams. Several deployments may serve one loaded Triton model
under different ids, each with its own limits, endpoints and ACLs: a Triton model is unloaded from a
server only when no deployment (and no configured model) needs it there any more.
"""

from __future__ import annotations

import ipaddress
import secrets
import time
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from gateway.config import Task

Status = Literal["creating", "deploying", "ready", "error", "deleting"]
Visibility = Literal["public", "private"]


def new_id(prefix: str) -> str:
    return f"{prefix}_{secrets.token_hex(8)}"


def now() -> int:
    return int(time.time())


def cidr(ip: str) -> str:
    """An address or a network, as its network's normal form (``10.1.2.3/8`` -> ``10.0.0.0/8``)."""
    try:
        return str(ipaddress.ip_network(ip.strip(), strict=False))
    except ValueError:
        raise ValueError(f"{ip!r} is not an IP address or a CIDR network") from None


class Endpoint(BaseModel):
    """Where a deployment answers: the public listener or the private one, with or without a key."""

    model_config = ConfigDict(extra="forbid")

    id: str = Field(default_factory=lambda: new_id("ep"))
    visibility: Visibility = "public"
    disable_auth: bool = False


class AclRule(BaseModel):
    """Client addresses allowed to call a deployment (none: every address)."""

    model_config = ConfigDict(extra="forbid")

    id: str = Field(default_factory=lambda: new_id("acl"))
    ip: str = Field(description="an address or a network in CIDR notation")
    description: str = ""

    @field_validator("ip")
    @classmethod
    def _network(cls, ip: str) -> str:
        return cidr(ip)


class DeploymentLimits(BaseModel):
    model_config = ConfigDict(extra="forbid")

    max_in_flight: int | None = Field(default=None, ge=1)
    max_queue: int = Field(default=0, ge=0)
    queue_timeout: float = Field(default=5.0, gt=0)
    max_output_tokens: int = Field(default=4096, ge=1)
    context_length: int | None = Field(default=None, ge=1)


class Deployment(BaseModel):
    """One deployment as stored (durable); ``revision`` grows with every change."""

    model_config = ConfigDict(extra="forbid")

    id: str = Field(default_factory=lambda: new_id("dep"))
    name: str
    model_id: str  # the OpenAI `model` clients send
    triton_model: str
    task: Task = "generate"
    tokenizer_dir: str
    upstreams: list[str] = Field(default_factory=list)  # candidate Triton gRPC URLs, in preference order
    upstream_groups: list[str] = Field(default_factory=list)  # or named groups, in preference order
    min_size: int = 1
    max_size: int = 1
    placement: list[str] = Field(default_factory=list)  # the upstreams that hold it now
    limits: DeploymentLimits = Field(default_factory=DeploymentLimits)
    tags: list[str] = Field(default_factory=list)
    status: Status = "creating"
    error_message: str | None = None
    endpoints: list[Endpoint] = Field(default_factory=lambda: [Endpoint()])
    acls: list[AclRule] = Field(default_factory=list)
    model_config_override: dict[str, object] | None = None  # RepositoryModelLoad's `config` parameter
    source: str | None = None  # a model the gateway materialises (gateway.deployments.materialise), by name
    created_at: int = Field(default_factory=now)
    updated_at: int = Field(default_factory=now)
    revision: int = 0
