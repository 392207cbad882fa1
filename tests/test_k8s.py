"""deploy/k8s: manifests parse, set real settings for the worker and the learner, and probe real endpoints."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml
from promql import DEPLOY
from test_compose import assert_parses

from app.settings import PREFIX, Settings, load_settings
from app.worker.http import LIVENESS_PATH, METRICS_PATH, READINESS_PATH
from app.worker.learning import STOP_SNAPSHOT_S

K8S = DEPLOY / "k8s"
# The learner's Deployment and Service; every other file is the workers' or shared by both.
LEARNER = K8S / "learner.yaml"


def documents(path: Path) -> list[dict[str, Any]]:
    return [doc for doc in yaml.safe_load_all(path.read_text()) if doc]


def manifests(*, learner: bool = False) -> dict[str, dict[str, Any]]:
    """Kind -> the manifest (one of each kind): the learner's, or those of every other file."""
    found: dict[str, dict[str, Any]] = {}
    for path in sorted(K8S.glob("*.yaml")):
        if (path == LEARNER) != learner:
            continue
        for doc in documents(path):
            assert {"apiVersion", "kind"} <= doc.keys(), path
            if doc["kind"] != "Kustomization":
                assert doc["metadata"]["name"], path
            assert doc["kind"] not in found, f"two {doc['kind']}s"
            found[doc["kind"]] = doc
    return found


def pod_spec(*, learner: bool = False) -> dict[str, Any]:
    spec: dict[str, Any] = manifests(learner=learner)["Deployment"]["spec"]["template"]["spec"]
    return spec


def container(*, learner: bool = False) -> dict[str, Any]:
    (found,) = pod_spec(learner=learner)["containers"]
    assert isinstance(found, dict)
    return found


def worker_env(*, learner: bool = False) -> dict[str, str]:
    """What the worker's (or learner's) environment holds: the ConfigMap, the Secret, then explicit env."""
    found = manifests()
    env: dict[str, str] = {}
    for source in container(learner=learner).get("envFrom", []):
        if "configMapRef" in source:
            config = found["ConfigMap"]
            assert source["configMapRef"]["name"] == config["metadata"]["name"]
            env.update(config["data"])
        if "secretRef" in source:
            secret = found["Secret"]
            assert source["secretRef"]["name"] == secret["metadata"]["name"]
            env.update(secret["stringData"])
    for item in container(learner=learner).get("env", []):
        env[item["name"]] = item.get("value", "from a reference")
    return env


def test_manifests_parse_and_kustomization_lists_them() -> None:
    found = manifests()
    assert {
        "ConfigMap",
        "Secret",
        "Deployment",
        "PodDisruptionBudget",
        "Service",
        "ServiceMonitor",
    } <= found.keys()
    assert manifests(learner=True).keys() == {"Deployment", "Service"}
    resources = set(found["Kustomization"]["resources"])
    files = {p.name for p in K8S.glob("*.yaml")} - {"kustomization.yaml"}
    # The example Secret stays out: real credentials come from the cluster's secret store.
    assert resources == files - {"secret.example.yaml"}


def test_environment_is_made_of_real_settings() -> None:
    env = worker_env()
    unknown = {
        k
        for k in env
        if not (k.startswith(PREFIX) and k[len(PREFIX) :].lower() in Settings.__struct_fields__)
    }
    assert not unknown, f"not settings: {unknown}"
    settings = load_settings(env)
    # Credentials come from the Secret, never the ConfigMap.
    config = manifests()["ConfigMap"]["data"]
    assert not {"MM_KAFKA_SASL_PASSWORD", "MM_REDIS_URL"} & config.keys()
    assert {"MM_KAFKA_SASL_PASSWORD", "MM_REDIS_URL"} <= manifests()["Secret"]["stringData"].keys()
    assert settings.metrics_host == "0.0.0.0"  # the kubelet probes the pod IP
    assert not settings.create_topics
    # More replicas than partitions would stay idle.
    assert manifests()["Deployment"]["spec"]["replicas"] <= settings.partitions


@pytest.mark.parametrize("learner", [False, True], ids=["worker", "learner"])
def test_probes_hit_the_worker_endpoints(learner: bool) -> None:
    settings = load_settings(worker_env(learner=learner))
    worker = container(learner=learner)
    ports = {port["name"]: port["containerPort"] for port in worker["ports"]}
    assert ports["metrics"] == settings.metrics_port
    expected = {
        "startupProbe": LIVENESS_PATH,
        "livenessProbe": LIVENESS_PATH,
        "readinessProbe": READINESS_PATH,
    }
    for probe, path in expected.items():
        get = worker[probe]["httpGet"]
        assert get["path"] == path, probe
        assert ports.get(get["port"], get["port"]) == settings.metrics_port, probe


def test_worker_container_is_bounded_and_unprivileged() -> None:
    worker = container()
    assert_parses(worker["args"])
    resources = worker["resources"]
    assert {"cpu", "memory"} <= resources["requests"].keys()
    assert "memory" in resources["limits"]
    assert pod_spec()["securityContext"]["runAsNonRoot"] is True
    security = worker["securityContext"]
    assert security["allowPrivilegeEscalation"] is False
    assert security["readOnlyRootFilesystem"] is True
    # A read-only root needs a writable /tmp (Faust's data directory).
    assert "/tmp" in {mount["mountPath"] for mount in worker["volumeMounts"]}
    # Long enough for a graceful stop to finish its batch and commit.
    assert pod_spec()["terminationGracePeriodSeconds"] >= 30
    rolling = manifests()["Deployment"]["spec"]["strategy"]["rollingUpdate"]
    assert rolling["maxSurge"] == 0


def labels_match(selector: dict[str, str], labels: dict[str, str]) -> bool:
    return bool(selector) and all(labels.get(k) == v for k, v in selector.items())


def test_selectors_find_the_workers_and_metrics() -> None:
    found = manifests()
    deployment = found["Deployment"]
    pod_labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert labels_match(deployment["spec"]["selector"]["matchLabels"], pod_labels)
    assert labels_match(found["PodDisruptionBudget"]["spec"]["selector"]["matchLabels"], pod_labels)
    service = found["Service"]
    assert labels_match(service["spec"]["selector"], pod_labels)
    # Not-ready workers are scraped too.
    assert service["spec"]["publishNotReadyAddresses"] is True
    (port,) = service["spec"]["ports"]
    assert port["targetPort"] == "metrics"
    monitor = found["ServiceMonitor"]
    assert labels_match(monitor["spec"]["selector"]["matchLabels"], service["metadata"]["labels"])
    (endpoint,) = monitor["spec"]["endpoints"]
    assert endpoint["port"] == port["name"]
    assert endpoint["path"] == METRICS_PATH
    # The operator names the job after the Service; the alert rules select job="micromoments".
    assert service["metadata"]["name"] == "micromoments"
    rules = (DEPLOY / "prometheus" / "rules" / "micromoments.yml").read_text()
    assert 'job="micromoments"' in rules


def test_workers_only_score_and_the_learner_learns() -> None:
    assert load_settings(worker_env()).learner is False
    learner = container(learner=True)
    assert learner["args"] == ["learner"]
    assert_parses(learner["args"])
    # The workers' settings (topics, group, Redis, the key that signs the models), from the same sources.
    assert container()["envFrom"] == learner["envFrom"]
    settings = load_settings(worker_env(learner=True))
    assert settings.model_key is not None
    assert settings.redis_url != "memory://"
    assert not settings.create_topics


def test_learner_container_is_bounded_and_unprivileged() -> None:
    learner = container(learner=True)
    resources = learner["resources"]
    assert {"cpu", "memory"} <= resources["requests"].keys()
    assert "memory" in resources["limits"]
    assert pod_spec(learner=True)["securityContext"]["runAsNonRoot"] is True
    security = learner["securityContext"]
    assert security["allowPrivilegeEscalation"] is False
    assert security["readOnlyRootFilesystem"] is True
    # Long enough to store what was learnt and leave the group.
    assert pod_spec(learner=True)["terminationGracePeriodSeconds"] > STOP_SNAPSHOT_S


def test_selectors_find_the_learners_and_their_metrics() -> None:
    found = manifests(learner=True)
    deployment = found["Deployment"]
    pod_labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert labels_match(deployment["spec"]["selector"]["matchLabels"], pod_labels)
    # Neither Deployment claims the other's pods; the workers' PDB and Service leave learners out.
    workers = manifests()
    assert not labels_match(
        deployment["spec"]["selector"]["matchLabels"],
        workers["Deployment"]["spec"]["template"]["metadata"]["labels"],
    )
    assert not labels_match(workers["Deployment"]["spec"]["selector"]["matchLabels"], pod_labels)
    assert not labels_match(workers["PodDisruptionBudget"]["spec"]["selector"]["matchLabels"], pod_labels)
    assert not labels_match(workers["Service"]["spec"]["selector"], pod_labels)
    service = found["Service"]
    assert labels_match(service["spec"]["selector"], pod_labels)
    assert service["spec"]["publishNotReadyAddresses"] is True
    (port,) = service["spec"]["ports"]
    assert port["targetPort"] == "metrics"
    monitor = workers["ServiceMonitor"]
    assert labels_match(monitor["spec"]["selector"]["matchLabels"], service["metadata"]["labels"])
    (endpoint,) = monitor["spec"]["endpoints"]
    assert endpoint["port"] == port["name"]
    # A job of its own: the worker alerts (job="micromoments") do not count learners as workers.
    assert service["metadata"]["name"] != "micromoments"
