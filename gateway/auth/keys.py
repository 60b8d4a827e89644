"""API keys: ``sk-<id>-<secret>``, stored only as the SHA-256 digest of the whole key.

The id (public, 8 hex) finds the record; the digest is compared in constant time. A key never
appears in logs: only its name and id do.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from dataclasses import dataclass

from gateway.auth.origin import Origin
from gateway.config import GatewayConfig, KeyConfig, LimitsConfig, ProjectConfig
from gateway.errors import Forbidden, Unauthorized

PREFIX = "sk-"
NO_KEY = "You didn't provide an API key. Use 'Authorization: Bearer YOUR_KEY'."


@dataclass(frozen=True, slots=True)
class Principal:
    """Who is calling: a key of a project (or the anonymous caller when auth is off, or a caller without a
    key of the models that need none on its listener)."""

    key_id: str
    key_name: str
    project: str
    models: frozenset[str] | None  # None: any model
    key_limits: LimitsConfig
    project_limits: LimitsConfig
    admin: bool = False  # may read every project's usage
    origin: Origin | None = None  # set while access control is on (None: e.g. the gRPC API)
    authenticated: bool = True  # False: no key, let in for models whose endpoint disables auth

    def may_use(self, model_id: str) -> bool:
        """Whether the model is in the key's scope (a model that exists: 404 alike when not). A caller
        without a key asking for a model that needs one gets 401: a key might open it."""
        if self.models is None or model_id in self.models:
            return True
        if not self.authenticated:
            raise Unauthorized(NO_KEY)
        return False

    def check_project(self, project_id: str | None) -> None:
        if project_id is not None and project_id != self.project:
            raise Forbidden(f"This key does not belong to the project '{project_id}'")


ANONYMOUS = Principal("", "anonymous", "default", None, LimitsConfig(), LimitsConfig())
UNAUTHENTICATED_PROJECT = "(unauthenticated)"  # not a project id: their limits and records stay apart


def unauthenticated(origin: Origin, models: frozenset[str]) -> Principal:
    """A caller without a key (auth on), who may use only ``models``: those whose endpoint on its
    listener disables auth."""
    return Principal(
        "",
        "unauthenticated",
        UNAUTHENTICATED_PROJECT,
        models,
        LimitsConfig(),
        LimitsConfig(),
        origin=origin,
        authenticated=False,
    )


def digest(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def new_key(project: str, name: str = "") -> tuple[str, KeyConfig]:
    """A fresh key (to print once) and the record to store."""
    key_id = secrets.token_hex(4)
    key = f"{PREFIX}{key_id}-{secrets.token_urlsafe(32)}"
    return key, KeyConfig(id=key_id, sha256=digest(key), project=project, name=name)


class KeyStore:
    def __init__(self, config: GatewayConfig) -> None:
        projects: dict[str, ProjectConfig] = {p.id: p for p in config.projects}
        self._keys: dict[str, tuple[KeyConfig, Principal]] = {}
        for key in config.keys:
            project = projects[key.project]
            allowed = key.models if key.models is not None else project.models
            principal = Principal(
                key.id,
                key.name or key.id,
                key.project,
                None if allowed is None else frozenset(allowed),
                key.limits,
                project.limits,
                key.admin,
            )
            self._keys[key.id] = (key, principal)

    @property
    def enabled(self) -> bool:
        """Whether auth is on (some key is configured)."""
        return bool(self._keys)

    def principal(self, key_id: str) -> Principal | None:
        """The caller a key id stood for (work done later on its behalf, e.g. a batch); None once the
        key is gone. Auth off: the anonymous caller."""
        if not self._keys:
            return ANONYMOUS
        found = self._keys.get(key_id)
        return found[1] if found else None

    def authenticate(self, authorization: str | None) -> Principal:
        """The caller of an ``Authorization: Bearer ...`` header; 401 when missing or wrong."""
        if not self._keys:
            return ANONYMOUS
        if not authorization:
            raise Unauthorized(NO_KEY)
        scheme, _, token = authorization.strip().partition(" ")
        token = token.strip()
        if scheme.lower() != "bearer" or not token:
            raise Unauthorized("Malformed Authorization header: expected 'Bearer YOUR_KEY'.")
        key_id = token[len(PREFIX) :].split("-", 1)[0] if token.startswith(PREFIX) else ""
        found = self._keys.get(key_id)
        presented = digest(token)
        stored = found[0].sha256 if found else "0" * 64
        if not hmac.compare_digest(presented, stored) or found is None:
            raise Unauthorized("Incorrect API key provided.")
        return found[1]
