"""deploy/kubernetes: the manifests a user applies, validated, and checked against the command
and the image they run.

- The Deployment and Services: `kubernetes-validate` in strict mode (unknown fields fail).
- The InferenceServices: `jsonschema` against KServe's CRD schema (vendored in tests/schemas),
  made as strict as the API server's `--validate=strict` (unknown fields fail).
- The scrape config: `promtool check config` (Debian's prometheus package: the `promtool` tier).
- Every path, port, flag and variable the manifests name exists in `winequality serve` and the
  server, with the values the image itself defaults to; the grace period covers the drain.
Each validation and the consistency check has a negative test.
"""

from __future__ import annotations

import copy
import gzip
import hashlib
import json
import re
import shlex
import shutil
import subprocess
from pathlib import Path
from typing import Any

import httpx
import jsonschema
import kubernetes_validate
import pytest
import yaml
from typer.main import get_command

from tests.conftest import ServerThread, tier_unavailable
from winequality.cli import app
from winequality.serving import create_app
from winequality.tracking import TRACKING_ENV

ROOT = Path(__file__).resolve().parents[1]
MANIFESTS = ROOT / "deploy" / "kubernetes"
KSERVE_SCHEMA = ROOT / "tests" / "schemas" / "kserve" / "inferenceservice-v1beta1.schema.json.gz"
KSERVE_SCHEMA_SHA256 = "3a4e38ac96b99fbaecb376241173e70f96f0e7a71e4e6e1610edc5cf2ddfbc36"
INFERENCE_SERVICES = [MANIFESTS / "inferenceservice.yaml",
                      ROOT / "deploy" / "kserve" / "inferenceservice-mlserver.yaml"]  # fmt: skip
KUBERNETES = "1.31"  # the oldest Kubernetes the manifests are for
MARGIN = 2  # seconds the grace period keeps beyond drain + shutdown


def documents(path: Path) -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d]


def manifest(kind: str, name: str = "wine-quality") -> dict[str, Any]:
    for path in sorted(MANIFESTS.glob("*.yaml")):
        for document in documents(path):
            if document["kind"] == kind and document["metadata"]["name"] == name:
                return document
    raise AssertionError(f"no {kind} {name} in {MANIFESTS}")


# --- validation ----------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["deployment.yaml", "service.yaml"])
def test_kubernetes_accepts_the_manifests_strictly(name: str) -> None:
    for document in documents(MANIFESTS / name):
        kubernetes_validate.validate(document, KUBERNETES, strict=True)


def test_kubernetes_validation_refuses_a_misspelled_field() -> None:
    deployment = manifest("Deployment")
    container = deployment["spec"]["template"]["spec"]["containers"][0]
    container["readinesProbe"] = container.pop("readinessProbe")
    with pytest.raises(kubernetes_validate.ValidationError, match="readinesProbe"):
        kubernetes_validate.validate(deployment, KUBERNETES, strict=True)


def strict(schema: Any) -> Any:
    """The CRD schema refusing unknown fields, as the API server's strict validation does
    (a CRD's schema only prunes them; plain JSON Schema would let them through)."""
    if isinstance(schema, dict):
        schema = {key: strict(value) for key, value in schema.items()}
        if (
            "properties" in schema
            and "additionalProperties" not in schema
            and not schema.get("x-kubernetes-preserve-unknown-fields")
        ):
            schema["additionalProperties"] = False
        return schema
    if isinstance(schema, list):
        return [strict(item) for item in schema]
    return schema


@pytest.fixture(scope="module")
def kserve_schema() -> dict[str, Any]:
    content = KSERVE_SCHEMA.read_bytes()
    assert hashlib.sha256(content).hexdigest() == KSERVE_SCHEMA_SHA256  # as its README says
    return strict(json.loads(gzip.decompress(content)))


@pytest.mark.parametrize("path", INFERENCE_SERVICES, ids=lambda p: p.name)
def test_the_inference_services_fit_kserves_crd(kserve_schema, path: Path) -> None:
    (service,) = documents(path)
    assert service["apiVersion"] == "serving.kserve.io/v1beta1"
    assert service["kind"] == "InferenceService"
    jsonschema.validate(service, kserve_schema)


@pytest.mark.parametrize(
    ("where", "field"),
    [(["spec", "predictor", "containers", 0], "readinesProbe"),
     (["spec", "predictor"], "minReplica")],
)  # fmt: skip
def test_the_crd_schema_refuses_a_misspelled_field(kserve_schema, where, field) -> None:
    (service,) = documents(MANIFESTS / "inferenceservice.yaml")
    node = service
    for key in where:
        node = node[key]
    node[field] = 1
    with pytest.raises(jsonschema.ValidationError, match=field):
        jsonschema.validate(service, kserve_schema)


@pytest.fixture(scope="module")
def promtool() -> str:
    found = shutil.which("promtool")
    if found is None:
        tier_unavailable("promtool", "promtool is missing", "apt install prometheus")
    assert found is not None
    return found


@pytest.mark.promtool
def test_promtool_accepts_the_scrape_config(promtool) -> None:
    done = subprocess.run([promtool, "check", "config", str(MANIFESTS / "prometheus.yml")],
                          capture_output=True, text=True, check=False)  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    assert "SUCCESS" in done.stdout


@pytest.mark.promtool
def test_promtool_refuses_a_misspelled_field(promtool, tmp_path) -> None:
    config = (MANIFESTS / "prometheus.yml").read_text()
    assert "scrape_timeout:" in config
    bad = tmp_path / "prometheus.yml"
    bad.write_text(config.replace("scrape_timeout:", "scrape_timout:"))
    done = subprocess.run([promtool, "check", "config", str(bad)],
                          capture_output=True, text=True, check=False)  # fmt: skip
    assert done.returncode != 0
    assert "field scrape_timout not found" in done.stdout + done.stderr


# --- the manifests against the command and the image ---------------------------------------


def image_env() -> dict[str, str]:
    """The environment the Containerfile's runtime stage sets (its `ENV` lines)."""
    text = (ROOT / "Containerfile").read_text().replace("\\\n", " ")
    runtime = text.split("AS runtime", 1)[1].split("\nFROM ", 1)[0]
    env: dict[str, str] = {}
    for line in runtime.splitlines():
        if line.startswith("ENV "):
            env.update(part.split("=", 1) for part in shlex.split(line[4:]))
    return env


def image_user() -> int:
    found = re.search(r"^USER (\d+):\d+$", (ROOT / "Containerfile").read_text(), re.MULTILINE)
    assert found
    return int(found.group(1))


SERVE = get_command(app).commands["serve"]  # type: ignore[attr-defined]
OPTIONS = {opt: param for param in SERVE.params for opt in param.opts}
ENVVARS = {param.envvar: param for param in SERVE.params if isinstance(param.envvar, str)}


def settings_of(args: list[str], env: dict[str, str]) -> dict[str, Any]:
    """What `winequality serve ARGS` runs with in that environment, parsed by the command."""
    with pytest.MonkeyPatch.context() as patch:
        for name in ENVVARS:
            patch.delenv(name, raising=False)
        for name, value in env.items():
            patch.setenv(name, value)
        return dict(SERVE.make_context("serve", list(args)).params)


def problems(pod: dict[str, Any], container: dict[str, Any]) -> list[str]:
    """What a pod's serving container names that the command or the image does not have."""
    found: list[str] = []
    args: list[str] = []
    given = container.get("args", [])
    for flag, value in zip(given[::2], given[1::2], strict=True):
        if flag in OPTIONS:
            args += [flag, value]
        else:
            found.append(f"unknown flag {flag}")
    env = image_env()
    for variable in container.get("env", []):
        if variable["name"] in ENVVARS:
            env[variable["name"]] = variable["value"]
        elif variable["name"] != TRACKING_ENV:
            found.append(f"unknown variable {variable['name']}")
    settings = settings_of(args, env)
    defaults = settings_of([], image_env() | {"WINEQUALITY_MODEL": "-"})
    ports = {p.get("name"): p["containerPort"] for p in container["ports"]}
    if settings.get("port") not in ports.values():
        found.append(f"the server listens on {settings.get('port')}, not a container port")
    drain, shutdown = settings["drain_delay"], settings["shutdown_timeout"]
    pre_stop = pre_stop_seconds(container)
    if pre_stop and drain:
        found.append("both a preStop hook and --drain-delay wait: one of the two")
    wait = pre_stop or drain  # what keeps the pod answering while endpoints drop it
    expected = {"drain_delay": 0.0 if pre_stop else defaults["drain_delay"],
                "shutdown_timeout": defaults["shutdown_timeout"]}  # fmt: skip
    for flag in ("--drain-delay", "--shutdown-timeout"):
        name = OPTIONS[flag].name
        if settings[name] != expected[name] and not (name == "drain_delay" and pre_stop):
            found.append(f"{flag} {settings[name]} is not the image's default")
    grace = pod.get("terminationGracePeriodSeconds", 30)
    if grace < wait + shutdown + MARGIN:
        found.append(f"terminationGracePeriodSeconds {grace} < wait {wait} + shutdown {shutdown}")
    readiness = container["readinessProbe"]
    if readiness.get("periodSeconds", 10) * readiness.get("failureThreshold", 3) > wait:
        found.append("the readiness probe cannot see the drain before it ends")
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        if probe not in container:
            continue
        get = container[probe]["httpGet"]
        if ports.get(get["port"], get["port"]) != settings["port"]:
            found.append(f"the {probe} asks port {get['port']}")
    user = pod["securityContext"].get("runAsUser")
    if user != image_user() or not pod["securityContext"].get("runAsNonRoot"):
        found.append(f"runs as {user}, not the image's user {image_user()}")
    if not container["securityContext"].get("readOnlyRootFilesystem"):
        found.append("the root filesystem is writable")
    mounts = {m["mountPath"]: m["name"] for m in container.get("volumeMounts", [])}
    volumes = {v["name"]: v for v in pod.get("volumes", [])}
    if "emptyDir" not in volumes.get(mounts.get("/tmp", ""), {}):
        found.append("no emptyDir at /tmp, the one place the server writes")
    return found


def pre_stop_seconds(container: dict[str, Any]) -> float:
    """How long a preStop hook sleeps (Kubernetes' sleep action or `sleep N`), else 0."""
    hook = container.get("lifecycle", {}).get("preStop") or {}
    if "sleep" in hook:
        return float(hook["sleep"]["seconds"])
    command = hook.get("exec", {}).get("command", [])
    return float(command[1]) if command[:1] == ["sleep"] else 0.0


def serving_pods() -> list[tuple[dict[str, Any], dict[str, Any]]]:
    deployment = manifest("Deployment")["spec"]["template"]["spec"]
    (service,) = documents(MANIFESTS / "inferenceservice.yaml")
    predictor = service["spec"]["predictor"]
    return [(deployment, deployment["containers"][0]), (predictor, predictor["containers"][0])]


@pytest.mark.parametrize("which", [0, 1], ids=["deployment", "inferenceservice"])
def test_the_manifests_name_only_what_the_command_and_the_image_have(which: int) -> None:
    pod, container = serving_pods()[which]
    assert problems(pod, container) == []


def test_the_check_finds_what_does_not_match() -> None:
    pod, container = copy.deepcopy(serving_pods()[0])
    container["args"] += ["--drain-dalay", "3"]
    container["env"].append({"name": "WINEQUALITY_PROT", "value": "80"})
    container["args"][container["args"].index("--shutdown-timeout") + 1] = "40"
    container["lifecycle"] = {"preStop": {"sleep": {"seconds": 5}}}
    container["readinessProbe"]["periodSeconds"] = 10
    container["livenessProbe"]["httpGet"]["port"] = 9999
    container["securityContext"]["readOnlyRootFilesystem"] = False
    container["volumeMounts"] = []
    pod["securityContext"]["runAsUser"] = 0
    assert problems(pod, container) == [
        "unknown flag --drain-dalay",
        "unknown variable WINEQUALITY_PROT",
        "both a preStop hook and --drain-delay wait: one of the two",
        "--shutdown-timeout 40 is not the image's default",
        "terminationGracePeriodSeconds 30 < wait 5.0 + shutdown 40",
        "the readiness probe cannot see the drain before it ends",
        "the livenessProbe asks port 9999",
        "runs as 0, not the image's user 10001",
        "the root filesystem is writable",
        "no emptyDir at /tmp, the one place the server writes",
    ]
    pod, container = copy.deepcopy(serving_pods()[0])
    next(e for e in container["env"] if e["name"] == "WINEQUALITY_PORT")["value"] = "9090"
    assert problems(pod, container)[0] == "the server listens on 9090, not a container port"


def test_a_pre_stop_sleep_may_wait_instead_of_the_drain() -> None:
    pod, container = copy.deepcopy(serving_pods()[0])
    container["args"][container["args"].index("--drain-delay") + 1] = "0"
    container["lifecycle"] = {"preStop": {"exec": {"command": ["sleep", "5"]}}}
    assert problems(pod, container) == []
    container["lifecycle"] = {"preStop": {"sleep": {"seconds": 10}}}
    assert problems(pod, container) == [
        "terminationGracePeriodSeconds 30 < wait 10.0 + shutdown 20"
    ]


def test_the_port_is_the_commands_and_the_images_default() -> None:
    assert OPTIONS["--port"].default == int(image_env()["WINEQUALITY_PORT"]) == 8080
    assert "EXPOSE 8080" in (ROOT / "Containerfile").read_text()


def test_every_path_they_name_answers_on_a_ready_server(scorer) -> None:
    (_, container), (_, kserve) = serving_pods()
    paths = {
        c[probe]["httpGet"]["path"]
        for c in (container, kserve)
        for probe in ("startupProbe", "readinessProbe", "livenessProbe")
        if probe in c
    }
    scrape = yaml.safe_load((MANIFESTS / "prometheus.yml").read_text())["scrape_configs"][0]
    paths.add(scrape["metrics_path"])
    assert paths >= {"/health/ready", "/health/live", "/v2/health/ready", "/metrics"}
    with ServerThread(create_app(scorer)) as url:
        for path in sorted(paths):
            assert httpx.get(url + path).status_code == 200, path
    (target,) = scrape["dns_sd_configs"][0]["names"]
    headless = manifest("Service", "wine-quality-pods")
    assert target.split(".")[0] == headless["metadata"]["name"]
    assert headless["spec"]["clusterIP"] == "None"
    assert scrape["dns_sd_configs"][0]["port"] == container["ports"][0]["containerPort"]


def test_the_services_reach_the_pods() -> None:
    template = manifest("Deployment")["spec"]["template"]
    ports = {p["name"] for p in template["spec"]["containers"][0]["ports"]}
    for name in ("wine-quality", "wine-quality-pods"):
        service = manifest("Service", name)["spec"]
        assert service["selector"].items() <= template["metadata"]["labels"].items()
        assert {p["targetPort"] for p in service["ports"]} <= ports
