"""Offline checks of the deployment files: Kubernetes manifests, compose file, Dockerfile.

No cluster is reachable from CI, so every manifest is validated against Kubernetes' own
OpenAPI schemas (``kubernetes-validate``, which ships them: no network), strictly, so an
unknown or misspelt field fails too; on top of that, what a schema cannot know is
cross-checked here: probes against the service's routes, the grace period against the
drain, selectors against labels, memory against the limit, and the ConfigMap's settings
through the real ``Settings`` class, so a typo or an invalid value fails here and not at
start-up. The image tag is checked to be the same in every file that names it.
"""

from __future__ import annotations

import copy
import re
import subprocess
import sys
import tomllib
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

from app.core.weights import load_weights
from app.serving.budget import peak_bytes
from app.serving.settings import Settings

# One worker runs them all: they share an apt install, the podman set-up and one image build.
pytestmark = [pytest.mark.deployment, pytest.mark.xdist_group("deployment")]
ROOT = Path(__file__).resolve().parents[2]
K8S = ROOT / "docker" / "k8s"
# The oldest Kubernetes the manifests support (autoscaling/v2 and policy/v1 are GA since
# 1.23 and 1.21; 1.25 is the oldest schema kubernetes-validate ships) and the newest it ships.
KUBERNETES_VERSIONS = ("1.25.0", kubernetes_validate.latest_version())
VERSION = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]
IMAGE = f"convewma:{VERSION}"  # README: IMAGE=convewma:<version>
CUDA_IMAGE = f"convewma-cuda:{VERSION}"
MANIFESTS = [
    ("configmap.yaml", "ConfigMap", "v1"),
    ("deployment.yaml", "Deployment", "apps/v1"),
    ("deployment-gpu.yaml", "Deployment", "apps/v1"),
    ("service.yaml", "Service", "v1"),
    ("hpa.yaml", "HorizontalPodAutoscaler", "autoscaling/v2"),
    ("pdb.yaml", "PodDisruptionBudget", "policy/v1"),
]


def load(name: str) -> dict[str, Any]:
    document = yaml.safe_load((K8S / name).read_text())
    assert isinstance(document, dict)
    return document


def containers(deployment: dict[str, Any]) -> list[dict[str, Any]]:
    return list(deployment["spec"]["template"]["spec"]["containers"])


def settings_of(container: dict[str, Any]) -> Settings:
    config = load("configmap.yaml")["data"]
    env = {**config, **{e["name"]: e["value"] for e in container.get("env", [])}}
    fields = {name.removeprefix("CONVEWMA_").lower(): value for name, value in env.items()}
    return Settings(**fields)


def kustomized(document: dict[str, Any]) -> dict[str, Any]:
    """``document`` with the kustomization's ``images:`` applied, as ``kubectl apply -k`` does."""
    images = {entry["name"]: entry for entry in load("kustomization.yaml")["images"]}
    document = copy.deepcopy(document)
    if document["kind"] == "Deployment":
        for container in containers(document):
            name = container["image"].rpartition(":")[0] or container["image"]
            if name in images:
                entry = images[name]
                container["image"] = f"{entry.get('newName', name)}:{entry['newTag']}"
    return document


def cpu_cores(quantity: str) -> float:
    return float(quantity[:-1]) / 1000 if quantity.endswith("m") else float(quantity)


@pytest.mark.parametrize("version", KUBERNETES_VERSIONS)
@pytest.mark.parametrize(("name", "kind", "api"), MANIFESTS)
def test_every_manifest_matches_the_kubernetes_schema(name, kind, api, version):
    document = load(name)
    assert (document["kind"], document["apiVersion"]) == (kind, api)
    # Strict: fields the schema does not know are errors too (a misspelt field is
    # otherwise silently dropped by the API server).
    kubernetes_validate.validate(document, version, strict=True)
    kubernetes_validate.validate(kustomized(document), version, strict=True)
    # DNS-1123 label: what Services and Deployments need, and no schema checks.
    assert re.fullmatch(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?", document["metadata"]["name"])


@pytest.mark.parametrize(
    ("path", "value", "error"),
    [
        (("spec", "replicas"), "2", "is not of type 'integer'"),
        (("spec", "template", "spec", "terminationGracePeriodSecond"), 45, "was unexpected"),
        (("spec", "template", "spec", "containers", 0, "ports", 0, "containerPort"), "http", "not of type"),
    ],
)
def test_the_schema_check_catches_mistakes(path, value, error):
    # The validation above is only worth something if it fails on a broken manifest.
    document = load("deployment.yaml")
    parent = document
    for key in path[:-1]:
        parent = parent[key]
    parent[path[-1]] = value
    with pytest.raises(kubernetes_validate.ValidationError, match=re.escape(error)):
        kubernetes_validate.validate(document, KUBERNETES_VERSIONS[-1], strict=True)


def test_kustomization_lists_the_cpu_stack():
    kustomization = load("kustomization.yaml")
    assert set(kustomization["resources"]) == {
        "configmap.yaml",
        "deployment.yaml",
        "service.yaml",
        "hpa.yaml",
        "pdb.yaml",
    }
    for resource in kustomization["resources"]:
        assert (K8S / resource).is_file()


@pytest.mark.parametrize("name", ["deployment.yaml", "deployment-gpu.yaml"])
def test_deployment_probes_resources_and_graceful_termination(name):
    deployment = load(name)
    spec = deployment["spec"]
    template = spec["template"]
    labels = template["metadata"]["labels"]
    assert spec["selector"]["matchLabels"].items() <= labels.items()
    (container,) = containers(deployment)
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert ports == {"http": 8000}
    assert container["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "http"}
    assert container["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "http"}
    assert container["startupProbe"]["httpGet"]["path"] == "/readyz"
    for kind in ("requests", "limits"):
        assert {"cpu", "memory"} <= set(container["resources"][kind])
    pre_stop = container["lifecycle"]["preStop"]["exec"]["command"]
    assert pre_stop[0] == "sleep"
    settings = settings_of(container)  # invalid settings raise here
    # The pod must outlive preStop + drain + the longest request before SIGKILL.
    needed = float(pre_stop[1]) + settings.drain_s + settings.request_timeout_s
    assert template["spec"]["terminationGracePeriodSeconds"] >= needed
    assert template["spec"]["securityContext"]["runAsNonRoot"] is True


def test_gpu_variant_asks_for_a_gpu_and_cuda():
    (container,) = containers(load("deployment-gpu.yaml"))
    assert container["resources"]["limits"]["nvidia.com/gpu"] == 1
    assert settings_of(container).device == "cuda"


def test_service_hpa_and_pdb_point_at_the_deployment():
    deployment = load("deployment.yaml")
    pod_labels = deployment["spec"]["template"]["metadata"]["labels"]
    service = load("service.yaml")
    assert service["spec"]["selector"].items() <= pod_labels.items()
    assert service["spec"]["ports"][0]["targetPort"] == "http"
    hpa = load("hpa.yaml")
    target = hpa["spec"]["scaleTargetRef"]
    assert (target["kind"], target["name"]) == ("Deployment", deployment["metadata"]["name"])
    assert hpa["spec"]["minReplicas"] >= 2  # with the PDB, a voluntary eviction keeps one serving
    pdb = load("pdb.yaml")
    assert pdb["spec"]["selector"]["matchLabels"].items() <= pod_labels.items()
    assert pdb["spec"]["minAvailable"] < hpa["spec"]["minReplicas"]


def test_torch_threads_fit_the_cpu_limit():
    # 0 (torch's default) would start one thread per core of the node, not of the pod:
    # on a large node, dozens of threads throttled to the CPU limit.
    (container,) = containers(load("deployment.yaml"))
    threads = settings_of(container).torch_threads
    assert 1 <= threads <= cpu_cores(container["resources"]["limits"]["cpu"])


def test_configmap_holds_valid_settings_only():
    data = load("configmap.yaml")["data"]
    assert all(name.startswith("CONVEWMA_") and isinstance(value, str) for name, value in data.items())
    settings = Settings(**{n.removeprefix("CONVEWMA_").lower(): v for n, v in data.items()})
    assert settings.max_body_bytes == 64 * 1024 * 1024  # nginx's client_max_body_size 64m


@pytest.mark.parametrize("name", ["deployment.yaml", "deployment-gpu.yaml"])
def test_memory_sizing_fits_the_limit_with_headroom(name):
    # The same rule the README gives: idle process + one batch + the in-flight budget stays
    # under 80% of the container's limit (tests/integration/test_overload.py measures it).
    container = load(name)["spec"]["template"]["spec"]["containers"][0]
    limit = container["resources"]["limits"]["memory"]
    limit_bytes = int(limit[:-2]) * {"Gi": 1 << 30, "Mi": 1 << 20}[limit[-2:]]
    settings = settings_of(container)
    channels = len(load_weights(settings.weights).card.channels)
    peak = peak_bytes(settings.max_inflight_bytes, settings.max_batch_values, channels)
    assert peak <= 0.8 * limit_bytes, f"{name}: {peak / 2**30:.2f} GiB of {limit}"


def test_nginx_limits_match_the_service_defaults():
    conf = (ROOT / "docker" / "nginx" / "convewma.conf").read_text()
    defaults = Settings()
    body = int(re.search(r"client_max_body_size (\d+)m;", conf).group(1))  # type: ignore[union-attr]
    assert body * 1024 * 1024 == defaults.max_body_bytes
    read_timeout = int(re.search(r"proxy_read_timeout (\d+)s;", conf).group(1))  # type: ignore[union-attr]
    assert defaults.request_timeout_s < read_timeout <= defaults.request_timeout_s + 10


def test_hadolint_passes_on_the_dockerfile():
    hadolint = Path(sys.executable).parent / "hadolint"
    result = subprocess.run(
        [str(hadolint) if hadolint.exists() else "hadolint", "--no-color", str(ROOT / "Dockerfile")],
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_compose_replicas_match_the_nginx_upstreams():
    compose = yaml.safe_load((ROOT / "docker" / "compose.yaml").read_text())
    services = compose["services"]
    replicas = sorted(name for name in services if name.startswith("convewma-"))
    assert len(replicas) >= 2
    conf = (ROOT / "docker" / "nginx" / "convewma.conf").read_text()
    assert sorted(re.findall(r"server (convewma-\d+):8000", conf)) == replicas
    nginx = services["nginx"]
    assert {name: dep["condition"] for name, dep in nginx["depends_on"].items()} == dict.fromkeys(
        replicas, "service_healthy"
    )
    assert any(v.startswith("./nginx/convewma.conf:") for v in nginx["volumes"])
    for name in replicas:
        replica = services[name]
        assert "/readyz" in " ".join(replica["healthcheck"]["test"])
        env = replica["environment"]
        needed = float(env["CONVEWMA_DRAIN_S"]) + float(env["CONVEWMA_REQUEST_TIMEOUT_S"])
        assert float(replica["stop_grace_period"].removesuffix("s")) >= needed


def test_the_image_tag_is_the_same_everywhere():
    # pyproject's version is the tag: the Dockerfile's VERSION label, compose's ${IMAGE}
    # default, the kustomization's images: and the manifests' own image fields.
    dockerfile = (ROOT / "Dockerfile").read_text()
    assert re.findall(r"^ARG VERSION=(\S+)$", dockerfile, flags=re.MULTILINE) == [VERSION]
    assert 'org.opencontainers.image.version="${VERSION}"' in dockerfile
    compose = yaml.safe_load((ROOT / "docker" / "compose.yaml").read_text())
    replicas = [s for name, s in compose["services"].items() if name.startswith("convewma-")]
    assert replicas
    for replica in replicas:
        assert replica["image"] == f"${{IMAGE:-{IMAGE}}}"
        assert replica["build"]["dockerfile"] == "Dockerfile"  # `compose build` tags $IMAGE
    images = {entry["name"]: entry for entry in load("kustomization.yaml")["images"]}
    assert images == {
        "convewma": {"name": "convewma", "newTag": VERSION},
        "convewma-cuda": {"name": "convewma-cuda", "newTag": VERSION},
    }
    for name, image in [("deployment.yaml", IMAGE), ("deployment-gpu.yaml", CUDA_IMAGE)]:
        (container,) = containers(load(name))
        assert container["image"] == image, name
        (container,) = containers(kustomized(load(name)))
        assert container["image"] == image, name


@pytest.mark.parametrize("doc", ["README.md", "docker/README.md", "Dockerfile"])
def test_the_docs_build_and_run_the_same_image(doc):
    text = (ROOT / doc).read_text()
    if doc == "README.md":
        assert f"IMAGE={IMAGE}" in text  # the variable its commands use
    # Every image a command tags is $IMAGE or carries the version; no bare `-t convewma`.
    for tag in re.findall(r"(?<![\w-])-t\s+(\S+)", text):
        assert tag.strip('"') == "$IMAGE" or tag.endswith(f":{VERSION}"), f"{doc}: -t {tag}"
    # Every image named with a tag carries the version.
    for name, tag in re.findall(r"\b(convewma(?:-cuda)?):([\w.-]+)", text):
        assert tag == VERSION, f"{doc}: {name}:{tag}"
