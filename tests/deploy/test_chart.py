"""The Helm chart and the kustomize manifests, checked offline: ``helm lint --strict`` (helm 3 and 4),
``helm template`` with the default and the HA values through ``kubernetes-validate --strict``, helm 4's
``install --dry-run=client`` (NOTES.txt), and what the rendered objects must say."""

from __future__ import annotations

import copy
import hashlib
import re
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest
import yaml
from deploy_support import CHART, KUBE_VERSIONS, REPO, VALUES_HA, VALUES_NATS, Helm, by_kind, one

from node.config_load import load

KUBERNETES_VALIDATE = Path(sys.executable).parent / "kubernetes-validate"
CRD_KINDS = {"ServiceMonitor"}  # no schema in kubernetes-validate; checked by hand below
SECRET_KEYS = ("client.token.hmac_secret_key", "client.subscription_token.hmac_secret_key", "http_api.key",
               "engine.redis.password", "broker.redis.password", "presence_manager.redis.password")
# `fugato serve --workers N` gives supervisord stopwaitsecs = shutdown.timeout + 5 (node/cli.py) before KILL.
SUPERVISORD_KILL_MARGIN = 5

VALUE_SETS = {"default": (), "ha": (VALUES_HA,), "nats": (VALUES_NATS,)}


def container(docs: Sequence[dict[str, Any]]) -> dict[str, Any]:
    containers = one(docs, "Deployment")["spec"]["template"]["spec"]["containers"]
    return next(c for c in containers if c["name"] == "fugato")


def env_of(c: dict[str, Any]) -> dict[str, Any]:
    return {e["name"]: e.get("value", e.get("valueFrom")) for e in c.get("env", [])}


def validate(path: Path, kube_version: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(KUBERNETES_VALIDATE), "--strict", "-k", kube_version, str(path)],
                          capture_output=True, text=True, timeout=60, check=False)


def assert_valid(text: str, tmp_path: Path, name: str) -> None:
    docs = [d for d in yaml.safe_load_all(text) if d]
    path = tmp_path / f"{name}.yaml"
    path.write_text(text)
    for version in KUBE_VERSIONS:
        proc = validate(path, version)
        out = proc.stdout + proc.stderr
        assert proc.returncode == 0, out
        passed = len(re.findall(r"^INFO .* passed for resource", out, re.M))
        assert passed == len([d for d in docs if d["kind"] not in CRD_KINDS]), out
        assert "ERROR" not in out, out


# --- lint and schema validation -------------------------------------------------------------------------------

@pytest.mark.parametrize("values", VALUE_SETS)
@pytest.mark.parametrize("version", ["helm3", "helm4"])
def test_lint_strict(helm: Helm, helm4: Helm, version: str, values: str) -> None:
    runner = helm if version == "helm3" else helm4
    args = ["lint", "--strict", str(CHART)]
    for path in VALUE_SETS[values]:
        args += ["-f", str(path)]
    out = runner.run(*args).stdout
    assert "1 chart(s) linted, 0 chart(s) failed" in out
    assert "[WARNING]" not in out and "[ERROR]" not in out


@pytest.mark.parametrize("values", VALUE_SETS)
def test_rendered_chart_passes_kubernetes_validate(helm: Helm, tmp_path: Path, values: str) -> None:
    assert_valid(helm.template(VALUE_SETS[values]), tmp_path, values)


def test_a_broken_object_fails_kubernetes_validate(helm: Helm, tmp_path: Path) -> None:
    # The check itself can fail: an unknown field in a container is rejected.
    text = helm.template().replace("imagePullPolicy: IfNotPresent", "imagePullPolicy: IfNotPresent\n          bogus: 1")
    path = tmp_path / "broken.yaml"
    path.write_text(text)
    proc = validate(path, KUBE_VERSIONS[0])
    assert proc.returncode != 0
    assert "bogus" in proc.stdout + proc.stderr


def test_no_secret_is_ever_rendered(helm: Helm) -> None:
    for values in VALUE_SETS.values():
        docs = helm.render(values, ["existingSecret=s", "envSecret[0].name=FUGATO_HTTP_API_KEY",
                                    "envSecret[0].secretKeyRef.name=k", "envSecret[0].secretKeyRef.key=api"])
        assert by_kind(docs, "Secret") == []
        text = yaml.safe_dump_all(docs)
        assert "hmac_secret_key" not in text and '"key"' not in one(docs, "ConfigMap")["data"]["config.json"]


# --- the default values --------------------------------------------------------------------------------------

def test_defaults_render_one_pod_and_two_services(helm: Helm) -> None:
    docs = helm.render()
    assert sorted(d["kind"] for d in docs) == ["ConfigMap", "Deployment", "Service", "Service", "ServiceAccount"]
    deployment = one(docs, "Deployment")
    assert deployment["spec"]["replicas"] == 1
    pod_labels = deployment["spec"]["template"]["metadata"]["labels"]
    services = {s["metadata"]["name"]: s for s in by_kind(docs, "Service")}
    client, internal = services["fugato"], services["fugato-internal"]
    assert [(p["name"], p["port"]) for p in client["spec"]["ports"]] == [("external", 8000)]
    assert [(p["name"], p["port"]) for p in internal["spec"]["ports"]] == [("internal", 9000)]
    for service in (client, internal):
        assert service["spec"]["type"] == "ClusterIP"
        assert service["spec"]["selector"].items() <= pod_labels.items()
    ports = {p["name"]: p["containerPort"] for p in container(docs)["ports"]}
    assert ports == {"external": 8000, "internal": 9000}


def test_config_checksum_rolls_pods(helm: Helm) -> None:
    docs = helm.render()
    config_json = one(docs, "ConfigMap")["data"]["config.json"]
    annotation = one(docs, "Deployment")["spec"]["template"]["metadata"]["annotations"]["checksum/config"]
    assert annotation == hashlib.sha256(config_json.rstrip("\n").encode()).hexdigest()
    changed = helm.render(sets=["config.log.level=debug"])
    assert one(changed, "Deployment")["spec"]["template"]["metadata"]["annotations"]["checksum/config"] != annotation


def test_probes_use_health_on_the_internal_port(helm: Helm) -> None:
    c = container(helm.render())
    for probe in ("startupProbe", "livenessProbe", "readinessProbe"):
        assert c[probe]["httpGet"] == {"path": "/health", "port": "internal"}, probe
    # /health answers 503 during an engine outage: liveness must outlast a short one.
    liveness = c["livenessProbe"]
    assert liveness["periodSeconds"] * liveness["failureThreshold"] >= 60


def test_grace_period_outlasts_prestop_and_drain(helm: Helm) -> None:
    for values in VALUE_SETS.values():
        docs = helm.render(values)
        c = container(docs)
        sleep = c["lifecycle"]["preStop"]["exec"]["command"]
        assert sleep[0] == "sleep"
        shutdown = env_of(c)["FUGATO_SHUTDOWN_TIMEOUT"]
        assert shutdown.endswith("s")
        drain = int(shutdown[:-1]) + SUPERVISORD_KILL_MARGIN
        grace = one(docs, "Deployment")["spec"]["template"]["spec"]["terminationGracePeriodSeconds"]
        assert grace > int(sleep[1]) + drain


def test_grace_period_shorter_than_the_drain_is_refused(helm: Helm) -> None:
    proc = helm.run(*helm.template_args(sets=["terminationGracePeriodSeconds=30"]), check=False)
    assert proc.returncode != 0
    assert "must exceed" in proc.stderr
    docs = helm.render(sets=["terminationGracePeriodSeconds=36"])
    assert one(docs, "Deployment")["spec"]["template"]["spec"]["terminationGracePeriodSeconds"] == 36


def test_security_contexts_and_writable_tmp(helm: Helm) -> None:
    docs = helm.render()
    pod = one(docs, "Deployment")["spec"]["template"]["spec"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["runAsUser"] == 1000
    assert pod["automountServiceAccountToken"] is False
    c = container(docs)
    assert c["securityContext"]["readOnlyRootFilesystem"] is True
    assert c["securityContext"]["allowPrivilegeEscalation"] is False
    assert c["securityContext"]["capabilities"]["drop"] == ["ALL"]
    mounts = {m["mountPath"]: m for m in c["volumeMounts"]}
    volumes = {v["name"]: v for v in pod["volumes"]}
    assert "emptyDir" in volumes[mounts["/tmp"]["name"]]
    assert mounts["/etc/fugato"]["readOnly"] is True
    assert volumes[mounts["/etc/fugato"]["name"]]["configMap"]["name"] == one(docs, "ConfigMap")["metadata"]["name"]
    assert c["resources"]["limits"]["cpu"] == "1"


@pytest.mark.parametrize("values", VALUE_SETS)
def test_the_pod_loads_the_config_the_chart_gives_it(helm: Helm, tmp_path: Path, values: str) -> None:
    """config.json from the ConfigMap plus the container's plain env, through Fugato's own loader."""
    docs = helm.render(VALUE_SETS[values])
    path = tmp_path / "config.json"
    path.write_text(one(docs, "ConfigMap")["data"]["config.json"])
    env = {k: v for k, v in env_of(container(docs)).items() if isinstance(v, str)}
    result = load(str(path), env, {})
    assert result.warnings == ()
    config = result.config
    assert config.http_server.port == 8000 and config.http_server.internal_port == 9000
    assert config.health.enabled and config.health.handler_prefix == "/health"
    assert config.prometheus.enabled and config.prometheus.handler_prefix == "/metrics"
    assert config.shutdown.timeout == 25
    assert config.engine.type == ("redis" if values == "ha" else "memory")
    if values == "nats":
        assert (config.broker.enabled, config.broker.type) == (True, "nats")
        assert config.broker.nats.url == "nats://nats.messaging.svc.cluster.local:4222"
        assert (config.presence_manager.enabled, config.presence_manager.type) == (True, "redis")


@pytest.mark.parametrize("key", SECRET_KEYS)
def test_secrets_in_values_are_refused(helm: Helm, key: str) -> None:
    proc = helm.run(*helm.template_args(sets=[f"config.{key}=oops"]), check=False)
    assert proc.returncode != 0
    assert f"FUGATO_{key.upper().replace('.', '_')}" in proc.stderr


def test_secrets_reach_the_pod_as_env_from_user_secrets(helm: Helm) -> None:
    c = container(helm.render(sets=["existingSecret=fugato-secrets",
                                    "envSecret[0].name=FUGATO_ENGINE_REDIS_PASSWORD",
                                    "envSecret[0].secretKeyRef.name=redis", "envSecret[0].secretKeyRef.key=pw"]))
    assert c["envFrom"] == [{"secretRef": {"name": "fugato-secrets"}}]
    assert env_of(c)["FUGATO_ENGINE_REDIS_PASSWORD"] == {"secretKeyRef": {"name": "redis", "key": "pw"}}


@pytest.mark.parametrize(("setting", "message"), [
    ("replicaCont=2", "replicaCont"),       # a typo in a value name
    ("workers=many", "workers"),
    ("service.type=Ingress", "service.type"),
])
def test_values_schema_rejects_mistakes(helm: Helm, setting: str, message: str) -> None:
    proc = helm.run(*helm.template_args(sets=[setting]), check=False)
    assert proc.returncode != 0
    assert message in proc.stderr


def test_worker_count_is_passed_to_the_entrypoint(helm: Helm) -> None:
    assert container(helm.render())["args"] == ["--workers", "auto"]
    assert container(helm.render(sets=["workers=4", "config.engine.type=redis"]))["args"] == ["--workers", "4"]
    # `fugato serve --workers 4` refuses the memory engine; the chart says so before anything is deployed.
    proc = helm.run(*helm.template_args(sets=["workers=4"]), check=False)
    assert proc.returncode != 0 and "memory engine cannot span processes" in proc.stderr
    # A NATS broker with a Redis presence manager spans processes; a NATS broker with presence in memory does not.
    assert container(helm.render([VALUES_NATS], sets=["workers=4"]))["args"] == ["--workers", "4"]
    proc = helm.run(*helm.template_args(sets=["workers=4", "config.broker.enabled=true", "config.broker.type=nats"]),
                    check=False)
    assert proc.returncode != 0 and "memory engine cannot span processes" in proc.stderr


# --- the HA values -------------------------------------------------------------------------------------------

def test_ha_values_render_hpa_pdb_servicemonitor_ingress(helm: Helm) -> None:
    docs = helm.render([VALUES_HA])
    kinds = sorted(d["kind"] for d in docs)
    assert kinds == ["ConfigMap", "Deployment", "HorizontalPodAutoscaler", "Ingress", "PodDisruptionBudget",
                     "Service", "Service", "ServiceAccount", "ServiceMonitor"]
    deployment = one(docs, "Deployment")
    assert "replicas" not in deployment["spec"]  # the HPA owns it
    pod_labels = deployment["spec"]["template"]["metadata"]["labels"]

    hpa = one(docs, "HorizontalPodAutoscaler")
    assert hpa["apiVersion"] == "autoscaling/v2"
    assert hpa["spec"]["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "Deployment", "name": "fugato"}
    assert hpa["spec"]["minReplicas"] == 3
    metric_types = [m["type"] for m in hpa["spec"]["metrics"]]
    assert metric_types == ["Resource", "Pods"]
    assert hpa["spec"]["metrics"][1]["pods"]["metric"]["name"] == "centrifugo_node_num_clients"

    pdb = one(docs, "PodDisruptionBudget")
    assert pdb["apiVersion"] == "policy/v1" and pdb["spec"]["maxUnavailable"] == 1
    assert pdb["spec"]["selector"]["matchLabels"].items() <= pod_labels.items()

    monitor = one(docs, "ServiceMonitor")
    internal = next(s for s in by_kind(docs, "Service") if s["metadata"]["name"] == "fugato-internal")
    assert monitor["apiVersion"] == "monitoring.coreos.com/v1"
    assert monitor["spec"]["selector"]["matchLabels"].items() <= internal["metadata"]["labels"].items()
    client = next(s for s in by_kind(docs, "Service") if s["metadata"]["name"] == "fugato")
    assert not monitor["spec"]["selector"]["matchLabels"].items() <= client["metadata"]["labels"].items()
    endpoint = monitor["spec"]["endpoints"][0]
    assert endpoint["port"] == "internal" and endpoint["path"] == "/metrics"
    assert re.fullmatch(r"([0-9]+(ms|s|m|h))+", endpoint["interval"])
    assert monitor["metadata"]["labels"]["release"] == "kube-prometheus-stack"
    assert monitor["spec"]["namespaceSelector"] == {"matchNames": ["realtime"]}

    ingress = one(docs, "Ingress")
    annotations = ingress["metadata"]["annotations"]
    assert int(annotations["nginx.ingress.kubernetes.io/proxy-read-timeout"]) >= 3600
    paths = ingress["spec"]["rules"][0]["http"]["paths"]
    assert [(p["path"], p["backend"]["service"]["name"], p["backend"]["service"]["port"]["name"])
            for p in paths] == [("/connection", "fugato", "external")]


def test_ha_values_spread_pods_and_use_redis(helm: Helm) -> None:
    docs = helm.render([VALUES_HA])
    pod = one(docs, "Deployment")["spec"]["template"]["spec"]
    constraints = pod["topologySpreadConstraints"]
    assert {c["topologyKey"] for c in constraints} == {"topology.kubernetes.io/zone", "kubernetes.io/hostname"}
    pod_labels = one(docs, "Deployment")["spec"]["template"]["metadata"]["labels"]
    for constraint in constraints:
        assert constraint["labelSelector"]["matchLabels"].items() <= pod_labels.items()
    c = container(docs)
    assert c["resources"]["limits"]["cpu"] == "2"  # two workers with workers: auto
    assert env_of(c)["FUGATO_ENGINE_REDIS_PASSWORD"]["secretKeyRef"]["key"] == "redis-password"


def test_pdb_needs_exactly_one_bound(helm: Helm) -> None:
    proc = helm.run(*helm.template_args(sets=["podDisruptionBudget.enabled=true",
                                              "podDisruptionBudget.minAvailable=1"]), check=False)
    assert proc.returncode != 0 and "exactly one" in proc.stderr
    docs = helm.render(sets=["podDisruptionBudget.enabled=true", "podDisruptionBudget.maxUnavailable=null",
                             "podDisruptionBudget.minAvailable=50%"])
    assert one(docs, "PodDisruptionBudget")["spec"] == {
        "minAvailable": "50%", "selector": {"matchLabels": one(docs, "Deployment")["spec"]["selector"]["matchLabels"]}}


# --- install pipeline and NOTES.txt (helm 4 runs it without a cluster) ---------------------------------------

def test_install_dry_run_prints_how_to_connect_and_publish(helm4: Helm) -> None:
    out = helm4.run("install", "rt", str(CHART), "--dry-run=client", "--namespace", "realtime").stdout
    assert "STATUS: pending-install" in out
    notes = out.split("NOTES:", 1)[1]
    assert "kubectl -n realtime port-forward svc/rt-fugato 8000:8000" in notes
    assert "ws://127.0.0.1:8000/connection/websocket" in notes
    assert "http://127.0.0.1:9000/api/publish" in notes
    assert "no API key is configured" in notes

    out = helm4.run("install", "rt", str(CHART), "--dry-run=client", "--namespace", "realtime",
                    "-f", str(VALUES_HA)).stdout
    notes = out.split("NOTES:", 1)[1]
    assert "get secret fugato-secrets -o jsonpath='{.data.FUGATO_HTTP_API_KEY}'" in notes
    assert "wss://realtime.example.com/connection/websocket" in notes
    assert "no API key" not in notes


def test_notes_warn_about_several_memory_pods(helm4: Helm) -> None:
    install = ("install", "rt", str(CHART), "--dry-run=client")
    assert "several pods with the memory engine" in helm4.run(*install, "--set", "replicaCount=3").stdout
    assert "several pods with the memory engine" in helm4.run(*install, "--set", "autoscaling.enabled=true").stdout
    assert "several pods" not in helm4.run(*install).stdout
    assert "several pods" not in helm4.run(*install, "-f", str(VALUES_HA)).stdout
    assert "several pods" not in helm4.run(*install, "-f", str(VALUES_NATS)).stdout
    # A NATS broker alone does not share presence between processes: still a warning.
    assert "several pods with the memory engine" in helm4.run(
        *install, "--set", "replicaCount=3,config.broker.enabled=true,config.broker.type=nats").stdout


# --- kustomize ---------------------------------------------------------------------------------------------------

HELM_ONLY_LABELS = {"helm.sh/chart", "app.kubernetes.io/managed-by", "app.kubernetes.io/version"}


def kustomize(kubectl: Path, directory: Path) -> str:
    proc = subprocess.run([str(kubectl), "kustomize", str(directory)], capture_output=True, text=True, timeout=60,
                          check=False)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


def comparable(doc: dict[str, Any]) -> dict[str, Any]:
    """Without what only one side has: helm's labels and checksum annotation, the namespace, kustomize's hash."""
    doc = copy.deepcopy(doc)
    metadata = doc["metadata"]
    metadata.pop("namespace", None)
    if doc["kind"] == "ConfigMap":
        metadata["name"] = re.sub(r"-[a-z0-9]{10}$", "", metadata["name"])
    label_maps = [metadata.get("labels", {})]
    if doc["kind"] == "Deployment":
        template = doc["spec"]["template"]
        label_maps.append(template["metadata"]["labels"])
        template["metadata"].get("annotations", {}).pop("checksum/config", None)
        if not template["metadata"].get("annotations"):
            template["metadata"].pop("annotations", None)
        for volume in template["spec"]["volumes"]:
            if "configMap" in volume:
                volume["configMap"]["name"] = re.sub(r"-[a-z0-9]{10}$", "", volume["configMap"]["name"])
    for labels in label_maps:
        for key in HELM_ONLY_LABELS:
            labels.pop(key, None)
    return doc


def kind_and_name(doc: dict[str, Any]) -> tuple[str, str]:
    return doc["kind"], doc["metadata"]["name"]


def test_kustomize_base_validates_and_equals_the_chart_defaults(helm: Helm, kubectl: Path, tmp_path: Path) -> None:
    text = kustomize(kubectl, REPO / "k8s")
    assert_valid(text, tmp_path, "k8s")
    plain = sorted((comparable(d) for d in yaml.safe_load_all(text) if d), key=kind_and_name)
    charted = sorted((comparable(d) for d in helm.render()), key=kind_and_name)
    assert [kind_and_name(d) for d in plain] == [kind_and_name(d) for d in charted]
    for a, b in zip(plain, charted, strict=True):
        if a["kind"] == "ConfigMap":  # same JSON, formatting aside
            assert yaml.safe_load(a["data"]["config.json"]) == yaml.safe_load(b["data"]["config.json"])
            a["data"] = b["data"] = {}
        assert a == b, a["kind"]


def test_kustomize_redis_cluster_example(kubectl: Path, tmp_path: Path) -> None:
    text = kustomize(kubectl, REPO / "k8s" / "examples" / "redis-cluster")
    assert_valid(text, tmp_path, "redis-cluster")
    docs = [d for d in yaml.safe_load_all(text) if d]
    deployment = one(docs, "Deployment")
    assert deployment["spec"]["replicas"] == 3
    configmap = one(docs, "ConfigMap")
    assert yaml.safe_load(configmap["data"]["config.json"])["engine"]["type"] == "redis"
    volumes = deployment["spec"]["template"]["spec"]["volumes"]
    assert {"name": "config", "configMap": {"name": configmap["metadata"]["name"]}} in volumes
    c = container(docs)
    assert c["envFrom"] == [{"secretRef": {"name": "fugato-secrets"}}]
    assert one(docs, "PodDisruptionBudget")["spec"]["maxUnavailable"] == 1


def test_kustomize_nats_example(kubectl: Path, tmp_path: Path) -> None:
    text = kustomize(kubectl, REPO / "k8s" / "examples" / "nats")
    assert_valid(text, tmp_path, "nats")
    docs = [d for d in yaml.safe_load_all(text) if d]
    assert one(docs, "Deployment")["spec"]["replicas"] == 3
    path = tmp_path / "config.json"
    path.write_text(one(docs, "ConfigMap")["data"]["config.json"])
    result = load(str(path), {}, {})
    assert result.warnings == ()
    assert (result.config.broker.type, result.config.presence_manager.type) == ("nats", "redis")
    env = {e["name"]: e for e in container(docs)["env"]}
    assert env["FUGATO_PRESENCE_MANAGER_REDIS_PASSWORD"]["valueFrom"]["secretKeyRef"]["name"] == "redis"
