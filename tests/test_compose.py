"""docker-compose.yml and the Dockerfile agree with the code: no Docker engine runs here, so they are read.

Settings are real settings with valid values, the topic creation makes every topic the
worker uses with the partition counts it needs, the metrics port is the one Prometheus
scrapes, commands are real CLI commands, and nothing is published beyond the host's loopback.
"""

from __future__ import annotations

import re
import shlex
import tomllib
from pathlib import Path
from typing import Any

import pytest
import yaml
from promql import DEPLOY, ROOT

from app import cli
from app.settings import PREFIX, Settings, load_settings
from app.worker.http import LIVENESS_PATH, METRICS_PATH
from app.worker.kafka import copartitioned_topics, retention_ms

COMPOSE = ROOT / "docker-compose.yml"
DOCKERFILE = ROOT / "Dockerfile"
OUR_IMAGE = "micromoments:local"


def compose() -> dict[str, Any]:
    loaded: dict[str, Any] = yaml.safe_load(COMPOSE.read_text())
    return loaded


def services() -> dict[str, dict[str, Any]]:
    found: dict[str, dict[str, Any]] = compose()["services"]
    return found


def environment(service: dict[str, Any]) -> dict[str, str]:
    env = service.get("environment") or {}
    if isinstance(env, list):
        env = dict(item.split("=", 1) for item in env)
    return {key: str(value) for key, value in env.items()}


def ours() -> dict[str, dict[str, Any]]:
    """Services running the micromoments image."""
    return {name: s for name, s in services().items() if s.get("image") == OUR_IMAGE or "build" in s}


def worker_settings() -> Settings:
    return load_settings(environment(services()["worker"]))


def assert_parses(command: list[str]) -> None:
    try:
        cli._parser().parse_args(command)
    except SystemExit as exc:  # argparse's way of refusing
        raise AssertionError(f"not a micromoments command: {command}") from exc


def test_our_services_set_only_real_settings() -> None:
    found = ours()
    assert {"worker", "learner", "traffic"} <= found.keys()
    for name, service in found.items():
        env = environment(service)
        unknown = {
            k
            for k in env
            if k.startswith(PREFIX) and k[len(PREFIX) :].lower() not in Settings.__struct_fields__
        }
        assert not unknown, f"{name} sets {unknown}, which name no setting"
        load_settings(env)  # and their values are valid


def test_commands_are_real_cli_commands() -> None:
    for service in ours().values():
        assert_parses(service["command"])
    assert services()["worker"]["command"] == ["worker"]
    assert services()["learner"]["command"] == ["learner"]
    assert services()["traffic"]["command"][0] == "feed"


def test_workers_only_score_and_the_learner_learns_their_models() -> None:
    settings = worker_settings()
    assert settings.learner is False
    learner = load_settings(environment(services()["learner"]))
    # The same training topic, group, Redis and signing key as the workers.
    assert learner.model_key is not None
    assert learner.model_key == settings.model_key
    assert learner.redis_url == settings.redis_url
    assert learner.topic_training == settings.topic_training
    assert learner.group_id == settings.group_id
    assert not learner.create_topics
    assert services()["learner"]["depends_on"]["topics"]["condition"] == "service_completed_successfully"


def created_topics() -> dict[str, int]:
    """Topic -> partitions, as the one-shot ``topics`` service's script creates them."""
    service = services()["topics"]
    env = environment(service)
    (script,) = service["command"]
    created = {}
    for line in script.splitlines():
        words = shlex.split(line.strip()) if line.strip().startswith("create ") else []
        if words:
            # `$$` is compose's escape for a `$` the shell expands from the service's environment.
            topic, partitions = (re.sub(r"\$\$\{?(\w+)\}?", lambda m: env[m.group(1)], w) for w in words[1:3])
            created[topic] = int(partitions)
    assert created, "the topics service creates no topic"
    return created


def test_the_workers_own_copies_of_customers_data_age_out_as_the_worker_would_set() -> None:
    (script,) = services()["topics"]["command"]
    retention = {}
    for line in script.splitlines():
        words = shlex.split(line.strip()) if line.strip().startswith("create ") else []
        if len(words) > 3:
            retention[words[1]] = int(words[3])
    assert retention_ms(worker_settings()) == retention


def test_topic_creation_matches_the_worker() -> None:
    settings = worker_settings()
    created = created_topics()
    # Every topic a setting names (an optional one, such as the late events', may be unset).
    used = {getattr(settings, f) for f in Settings.__struct_fields__ if f.startswith("topic_")} - {None}
    missing = used - created.keys()
    assert not missing, f"the worker uses topics nobody creates: {missing}"
    # Partition N of every input topic and of the repartition topic holds the same customers.
    counts = {topic: created[topic] for topic in copartitioned_topics(settings)}
    assert set(counts.values()) == {settings.partitions}, counts
    # The worker does not create topics itself here, and starts after they exist.
    assert settings.create_topics is False
    depends = services()["worker"]["depends_on"]
    assert depends["topics"]["condition"] == "service_completed_successfully"
    # The traffic generator writes to the same topics.
    traffic = load_settings(environment(services()["traffic"]))
    assert traffic.input_topics == settings.input_topics
    assert traffic.kafka_bootstrap == settings.kafka_bootstrap


def test_kafka_is_a_single_kraft_node() -> None:
    kafka = environment(services()["kafka"])
    assert set(kafka["KAFKA_PROCESS_ROLES"].split(",")) == {"broker", "controller"}
    assert not any("zookeeper" in name for name in services())
    bootstrap = worker_settings().kafka_bootstrap
    assert f"PLAINTEXT://{bootstrap}" in kafka["KAFKA_ADVERTISED_LISTENERS"].split(",")
    assert kafka["KAFKA_AUTO_CREATE_TOPICS_ENABLE"] == "false"


def test_prometheus_scrapes_every_worker_on_its_metrics_port() -> None:
    settings = worker_settings()
    worker = services()["worker"]
    # Scalable: no fixed host port, no container name.
    assert "ports" not in worker
    assert "container_name" not in worker
    assert str(settings.metrics_port) in [str(p) for p in worker.get("expose", [])]
    assert settings.metrics_host == "0.0.0.0"  # inside the container network, for Prometheus
    config = yaml.safe_load((DEPLOY / "prometheus" / "prometheus.yml").read_text())
    (job,) = [j for j in config["scrape_configs"] if j["job_name"] == "micromoments"]
    assert job.get("metrics_path", METRICS_PATH) == METRICS_PATH
    (dns,) = job["dns_sd_configs"]
    assert dns["names"] == ["worker"]
    assert dns["type"] == "A"
    assert dns["port"] == settings.metrics_port


def mounts(service: dict[str, Any]) -> dict[str, str]:
    """Container path -> host path (relative to the repository) of bind mounts."""
    found = {}
    for volume in service.get("volumes", []):
        source, target, *_ = volume.split(":")
        if source.startswith("./"):
            assert (ROOT / source).exists(), f"{source} does not exist"
            found[target] = source
    return found


def test_prometheus_and_grafana_get_the_deploy_files() -> None:
    prometheus = mounts(services()["prometheus"])
    assert prometheus["/etc/prometheus/prometheus.yml"] == "./deploy/prometheus/prometheus.yml"
    config = yaml.safe_load((DEPLOY / "prometheus" / "prometheus.yml").read_text())
    (rules,) = config["rule_files"]
    rules_dir, pattern = rules.rsplit("/", 1)
    assert list((ROOT / prometheus[rules_dir]).glob(pattern)), "the rule files are not mounted where loaded"
    grafana = mounts(services()["grafana"])
    assert grafana["/etc/grafana/provisioning"] == "./deploy/grafana/provisioning"
    provider = yaml.safe_load((DEPLOY / "grafana/provisioning/dashboards/micromoments.yml").read_text())
    path = provider["providers"][0]["options"]["path"]
    assert list((ROOT / grafana[path]).glob("*.json"))


def test_only_loopback_ports_are_published() -> None:
    for name, service in services().items():
        for port in service.get("ports", []):
            assert str(port).startswith("127.0.0.1:"), f"{name} publishes {port} beyond loopback"


# --- Dockerfile ----------------------------------------------------------------------------------


def instructions() -> list[tuple[str, str]]:
    text = DOCKERFILE.read_text().replace("\\\n", " ")
    found = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            keyword, _, rest = line.partition(" ")
            found.append((keyword.upper(), rest.strip()))
    return found


def instruction(keyword: str) -> list[str]:
    return [rest for k, rest in instructions() if k == keyword]


def dockerfile_env() -> dict[str, str]:
    env: dict[str, str] = {}
    for rest in instruction("ENV"):
        for pair in shlex.split(rest):
            key, _, value = pair.partition("=")
            env[key] = value
    return env


def exec_form(rest: str) -> list[str]:
    loaded = yaml.safe_load(rest)  # JSON arrays are YAML
    assert isinstance(loaded, list), f"not in exec form: {rest}"
    return [str(word) for word in loaded]


def test_dockerfile_entrypoint_is_the_cli() -> None:
    scripts = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]
    (entrypoint,) = instruction("ENTRYPOINT")
    (program,) = exec_form(entrypoint)
    assert scripts[program] == "app.cli:main"
    (command,) = instruction("CMD")
    assert exec_form(command) == ["worker"]
    assert_parses(exec_form(command))


def test_dockerfile_is_multi_stage_non_root_and_healthchecked() -> None:
    assert len(instruction("FROM")) >= 2
    (user,) = instruction("USER")
    assert user.split(":")[0] not in ("0", "root")
    env = dockerfile_env()
    settings = load_settings({k: v for k, v in env.items() if k.startswith(PREFIX)})
    assert instruction("EXPOSE") == [str(settings.metrics_port)]
    (healthcheck,) = instruction("HEALTHCHECK")
    # The port the worker serves on (ENV above, or the container's own), the liveness path.
    assert f"http://127.0.0.1:%s{LIVENESS_PATH}' % os.environ['MM_METRICS_PORT']" in healthcheck
    assert "MM_METRICS_PORT" in env
    for rest in instruction("COPY"):
        if not rest.startswith("--from"):
            *sources, _ = rest.split()
            for source in sources:
                assert (ROOT / source).exists(), source
    # Only what the image needs goes into the build context.
    ignored = (ROOT / ".dockerignore").read_text().split()
    assert "*" in ignored
    assert "!app/" in ignored


@pytest.mark.parametrize("service", ["worker", "learner", "traffic"])
def test_our_services_use_the_built_image(service: str) -> None:
    found = services()[service]
    assert found["image"] == OUR_IMAGE
    assert services()["worker"]["build"] == "."
    assert Path(ROOT / "Dockerfile").exists()
