"""Triton's model-repository calls for the in-process fakes: what the deployments' manager asks of a
server (index, load, unload), answered from a set of loaded names, for tests of the operator API's
HTTP side. The real calls are tested against real tritonservers (tests/e2e/test_model_control.py)."""

from __future__ import annotations

from gateway.engine.repository import RepositoryModel


class FakeRepository:
    unavailable: bool
    loaded: set[str]
    loads: list[str]

    def _repository(self) -> set[str]:
        if not hasattr(self, "loaded"):
            self.loaded, self.loads = set(), []
        return self.loaded

    async def repository_index(self) -> list[RepositoryModel]:
        return [RepositoryModel(name, "1", "READY", "") for name in sorted(self._repository())]

    async def load_model(
        self,
        name: str,
        config: dict[str, object] | None = None,
        files: dict[str, bytes] | None = None,
        timeout_s: float = 300,
    ) -> None:
        self._repository().add(name)
        self.loads.append(name)

    async def unload_model(self, name: str, unload_dependents: bool = False, timeout_s: float = 120) -> None:
        self._repository().discard(name)

    def let_go(self) -> None:
        """A fake holds nothing in streams."""
