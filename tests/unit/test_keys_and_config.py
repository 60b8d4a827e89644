"""API keys (digest-only storage, constant-time check, model and project scope) and config loading."""

from __future__ import annotations

from pathlib import Path

import pytest

from gateway.auth.keys import ANONYMOUS, KeyStore, digest, new_key
from gateway.config import ConfigError, GatewayConfig, KeyConfig, ModelConfig, ProjectConfig, load_config
from gateway.errors import Forbidden, Unauthorized


def store(*keys: KeyConfig, models: list[str] | None = None) -> KeyStore:
    projects = [ProjectConfig(id="team-a", models=models), ProjectConfig(id="team-b")]
    return KeyStore(GatewayConfig(projects=projects, keys=list(keys)))


def test_no_keys_means_auth_off() -> None:
    assert store().authenticate(None) is ANONYMOUS


def test_key_is_stored_as_a_digest_and_checked() -> None:
    key, record = new_key("team-a", "ci")
    assert key.startswith(f"sk-{record.id}-") and record.sha256 == digest(key)
    assert key not in record.model_dump_json()
    keys = store(record)
    principal = keys.authenticate(f"Bearer {key}")
    assert (principal.project, principal.key_name) == ("team-a", "ci")
    for bad in (None, "", "Bearer", f"Basic {key}", f"Bearer {key}x", "Bearer sk-00000000-nope", "Bearer garbage"):
        with pytest.raises(Unauthorized):
            keys.authenticate(bad)


def test_model_and_project_scope() -> None:
    key, record = new_key("team-a")
    principal = store(record, models=["m1"]).authenticate(f"Bearer {key}")
    assert principal.may_use("m1") and not principal.may_use("m2")
    principal.check_project("team-a")
    principal.check_project(None)
    with pytest.raises(Forbidden):
        principal.check_project("team-b")
    own = record.model_copy(update={"models": ["m2"]})  # a key's own list replaces the project's
    assert store(own, models=["m1"]).authenticate(f"Bearer {key}").may_use("m2")


def test_config_file_overrides_and_field_errors(tmp_path: Path) -> None:
    path = tmp_path / "gateway.toml"
    path.write_text(
        'port = 9000\nhost = "0.0.0.0"\n[[projects]]\nid = "p"\n[projects.limits]\nrequests_per_minute = 5\n'
    )
    config = load_config(path, {"port": 9100, "host": None})
    assert (config.port, config.host) == (9100, "0.0.0.0")  # a flag beats the file; None falls through
    assert config.projects[0].limits.requests_per_minute == 5
    path.write_text("port = 9000\nportt = 1\n")
    with pytest.raises(ConfigError, match="portt"):
        load_config(path, {})
    path.write_text('[[projects]]\nid = "p"\n[projects.limits]\nrequests_per_minute = 0\n')
    with pytest.raises(ConfigError, match=r"projects\.0\.limits\.requests_per_minute"):
        load_config(path, {})
    path.write_text('[[keys]]\nid = "abcd1234"\nsha256 = "' + "0" * 64 + '"\nproject = "ghost"\n')
    with pytest.raises(ConfigError, match="unknown project 'ghost'"):
        load_config(path, {})
    path.write_text("port = [")
    with pytest.raises(ConfigError):
        load_config(path, {})


def test_keys_file_adds_keys_to_the_configs(tmp_path: Path) -> None:
    key, record = new_key("team")
    other, other_record = new_key("team")
    keys_file = tmp_path / "keys.toml"
    keys_file.write_text(f'[[keys]]\nid = "{record.id}"\nsha256 = "{record.sha256}"\nproject = "team"\n')
    config_file = tmp_path / "gateway.toml"
    config_file.write_text(
        f'[[projects]]\nid = "team"\n[[keys]]\nid = "{other_record.id}"\nsha256 = "{other_record.sha256}"\n'
        'project = "team"\n'
    )
    config = load_config(config_file, {"keys_file": keys_file})
    store = KeyStore(config)
    assert store.authenticate(f"Bearer {key}").project == "team"
    assert store.authenticate(f"Bearer {other}").project == "team"
    keys_file.write_text('[[keys]]\nid = "abc"\n')
    with pytest.raises(ConfigError, match="keys"):
        load_config(config_file, {"keys_file": keys_file})
    with pytest.raises(ConfigError, match="keys_file"):
        load_config(config_file, {"keys_file": tmp_path / "missing.toml"})


def test_a_model_names_one_server_or_several(tmp_path: Path) -> None:
    base = {"id": "m", "triton_model": "t", "tokenizer_dir": tmp_path}
    assert ModelConfig.model_validate(base).upstreams == ["127.0.0.1:8001"]
    assert ModelConfig.model_validate({**base, "triton_url": "a:8001"}).upstreams == ["a:8001"]
    assert ModelConfig.model_validate({**base, "triton_urls": ["a:8001", "b:8001"]}).upstreams == ["a:8001", "b:8001"]
    with pytest.raises(ValueError, match="set one of triton_url, triton_urls and upstream_groups"):
        ModelConfig.model_validate({**base, "triton_url": "a:8001", "triton_urls": ["b:8001"]})
    with pytest.raises(ValueError, match="twice"):
        ModelConfig.model_validate({**base, "triton_urls": ["a:8001", "a:8001"]})


def test_upstream_groups_resolve_in_preference_order_and_may_be_narrowed() -> None:
    groups = [{"name": "h100", "urls": ["a:1", "b:1"]}, {"name": "a100", "urls": ["c:1", "a:1"]}]
    model = {"id": "m", "triton_model": "t", "tokenizer_dir": "/x", "upstream_groups": ["a100", "h100"]}
    config = GatewayConfig.model_validate({"upstream_groups": groups, "models": [model]})
    assert config.urls_of(config.models[0]) == ["c:1", "a:1", "b:1"]
    narrowed = GatewayConfig.model_validate(
        {"upstream_groups": groups, "models": [{**model, "triton_urls": ["b:1", "c:1"]}]}
    )
    assert narrowed.urls_of(narrowed.models[0]) == ["c:1", "b:1"]
    with pytest.raises(ValueError, match="a server in none of its upstream_groups"):
        GatewayConfig.model_validate({"upstream_groups": groups, "models": [{**model, "triton_urls": ["z:1"]}]})
    with pytest.raises(ValueError, match="routing policy"):
        GatewayConfig.model_validate({"upstream_groups": [{"name": "fastest", "urls": ["a:1"]}]})
    with pytest.raises(ValueError, match="reserved"):
        GatewayConfig.model_validate({"projects": [{"id": "admin"}]})
