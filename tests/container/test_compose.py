"""compose.yaml, brought up with podman-compose: three Fugato nodes over Redis where a publication on node 1
reaches a client on node 3, the same over NATS with `--profile nats`; the Prometheus and Grafana services,
whose images cannot be pulled here, are checked through `podman-compose config` and promtool."""

from __future__ import annotations

import json
import shutil
import subprocess
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import cent
import jwt
import pytest
import yaml
from container_support import REPO, run_flags, sh, which_podman_compose
from harness import PyClient, PyEvent, free_port, wait_until

from node.config_load import load

pytestmark = pytest.mark.timeout(900)

COMPOSE = REPO / "compose.yaml"
NODE_CONFIG = json.loads((REPO / "conf" / "compose" / "config.json").read_text())
SECRET = NODE_CONFIG["client"]["token"]["hmac_secret_key"]
API_KEY = NODE_CONFIG["http_api"]["key"]
PORT_VARIABLES = ("FUGATO1_PORT", "FUGATO1_INTERNAL_PORT", "FUGATO2_PORT", "FUGATO3_PORT", "FUGATO_NATS1_PORT",
                  "FUGATO_NATS1_INTERNAL_PORT", "FUGATO_NATS2_PORT", "FUGATO_NATS3_PORT", "PROMETHEUS_PORT",
                  "GRAFANA_PORT")


def compose_command(project: str) -> list[str]:
    """podman-compose with this machine's podman flags (see container_support) and no pod."""
    return [which_podman_compose(), "--in-pod", "false", "--podman-args=--runtime runc",
            f"--podman-run-args={' '.join(run_flags())}", "-p", project, "-f", str(COMPOSE)]


def compose_config(*args: str) -> dict[str, Any]:
    proc = sh([*compose_command("fugato-config"), *args, "config"])
    config: dict[str, Any] = yaml.safe_load(proc.stdout)
    return config


@dataclass
class Cluster:
    project: str
    env: dict[str, str]

    def port(self, variable: str) -> int:
        return int(self.env[variable])


@pytest.fixture(scope="module")
def cluster(image: str, redis_image: str, nats_image: str, tmp_path_factory: pytest.TempPathFactory
            ) -> Iterator[Cluster]:
    project = f"fugato-test-{uuid.uuid4().hex[:8]}"
    env = {"FUGATO_IMAGE": image, "REDIS_IMAGE": redis_image, "NATS_IMAGE": nats_image,
           **{variable: str(free_port()) for variable in PORT_VARIABLES}}
    command = [*compose_command(project), "--profile", "nats"]
    log = tmp_path_factory.mktemp("compose") / "up.log"
    try:
        up = sh([*command, "up", "-d", "redis", "fugato1", "fugato2", "fugato3",
                 "nats", "fugato-nats1", "fugato-nats3"], timeout=300, check=False, env=env)
        log.write_text(up.stdout + up.stderr)
        assert up.returncode == 0, log.read_text()[-4000:]
        yield Cluster(project, env)
    finally:
        sh([*command, "down", "--timeout", "60"], timeout=300, check=False, env=env)
        sh(["podman", "network", "rm", "--force", f"{project}_default"], check=False)


def token(user: str, channel: str) -> str:
    return jwt.encode({"sub": user, "channels": [channel]}, SECRET, "HS256")


async def wait_nodes(internal_port: int, count: int) -> None:
    async def enough() -> bool:
        try:
            async with aiohttp.ClientSession() as session, session.post(
                    f"http://127.0.0.1:{internal_port}/api/info", data=b"{}", headers={"X-API-Key": API_KEY},
                    timeout=aiohttp.ClientTimeout(total=3)) as r:
                return len((await r.json())["result"]["nodes"]) == count
        except (aiohttp.ClientError, KeyError, ValueError):
            return False
    await wait_until(enough, timeout=120, interval=0.5, what=f"{count} nodes see each other")


async def publication_crosses_nodes(api_port: int, client_port: int, channel: str) -> None:
    async with PyClient(f"ws://127.0.0.1:{client_port}/connection/websocket", token("carol", channel)) as client:
        await client.wait("server_subscribed", channel)
        async with cent.AsyncClient(f"http://127.0.0.1:{api_port}/api", API_KEY, timeout=10) as api:
            await api.publish(cent.PublishRequest(channel=channel, data={"from": "node 1"}))
        publication: PyEvent = await client.wait("server_publication", channel)
        assert publication.ctx.pub.data == {"from": "node 1"}


async def test_a_publication_on_node_1_reaches_a_client_on_node_3_over_redis(cluster: Cluster) -> None:
    await wait_nodes(cluster.port("FUGATO1_INTERNAL_PORT"), 3)
    await publication_crosses_nodes(cluster.port("FUGATO1_INTERNAL_PORT"), cluster.port("FUGATO3_PORT"),
                                    f"chat:{uuid.uuid4().hex[:8]}")


async def test_node_1_serves_the_admin_ui_on_its_internal_port(cluster: Cluster) -> None:
    """The UI's files are package data: a wrong Dockerfile or package-data list would leave them out."""
    base = f"http://127.0.0.1:{cluster.port('FUGATO1_INTERNAL_PORT')}"
    async with aiohttp.ClientSession() as session:
        async with session.get(f"{base}/") as page:
            assert page.status == 200 and "<html" in (await page.text()).lower()
        async with session.get(f"{base}/admin.js") as script:
            assert script.status == 200 and len(await script.read()) > 1000
        async with session.post(f"{base}/admin/auth", json={"password": "compose-dev-admin-password"}) as auth:
            assert auth.status == 200 and (await auth.json())["token"]
        async with session.get(f"http://127.0.0.1:{cluster.port('FUGATO2_PORT')}/") as elsewhere:
            assert elsewhere.status == 404  # only node 1 enables it, and never on a client port


async def test_the_same_over_nats_with_the_profile(cluster: Cluster) -> None:
    await wait_nodes(cluster.port("FUGATO_NATS1_INTERNAL_PORT"), 2)
    await publication_crosses_nodes(cluster.port("FUGATO_NATS1_INTERNAL_PORT"), cluster.port("FUGATO_NATS3_PORT"),
                                    f"chat:{uuid.uuid4().hex[:8]}")


def test_every_node_config_is_valid() -> None:
    services = compose_config("--profile", "nats")["services"]
    nodes = {name: s for name, s in services.items() if s.get("image", "").startswith("fugato")}
    assert len(nodes) == 6
    for name, service in nodes.items():
        env = {k: str(v) for k, v in (service.get("environment") or {}).items()}
        result = load(str(REPO / "conf" / "compose" / "config.json"), env, {})
        if "nats" in name:  # as in Centrifugo, NATS keeps no history: the chat namespace's is off there (108)
            assert len(result.warnings) == 1 and "not available with the NATS broker" in result.warnings[0]
        else:
            assert result.warnings == (), (name, result.warnings)
        assert result.config.engine.type == "redis" and result.config.prometheus.enabled
        assert result.config.broker.type == ("nats" if "nats" in name else "memory")
        assert result.config.admin.enabled is (name == "fugato1")


def test_prometheus_and_grafana_services_point_at_files_that_exist() -> None:
    plain = compose_config()["services"]
    assert {"redis", "fugato1", "fugato2", "fugato3", "prometheus", "grafana"} <= set(plain)
    assert not {"nats", "fugato-nats1"} & set(plain), "the NATS part is only in its profile"
    services = compose_config("--profile", "nats")["services"]
    assert {"nats", "fugato-nats1", "fugato-nats2", "fugato-nats3"} <= set(services)

    mounts: dict[str, Path] = {}
    for service in services.values():
        for volume in service.get("volumes", []):
            source, target = volume.split(":")[:2]
            path = (COMPOSE.parent / source).resolve()
            assert path.exists(), f"{source} is mounted but missing"
            mounts[target] = path

    prometheus = yaml.safe_load(mounts["/etc/prometheus/prometheus.yml"].read_text())
    assert services["prometheus"]["command"] == ["--config.file=/etc/prometheus/prometheus.yml"]
    for rule_file in prometheus["rule_files"]:
        assert f"/etc/prometheus/{rule_file}" in mounts
    targets = {t for job in prometheus["scrape_configs"] for c in job.get("static_configs", []) for t in c["targets"]}
    internal_port = NODE_CONFIG["http_server"]["internal_port"]
    assert targets == {f"fugato{i}:{internal_port}" for i in (1, 2, 3)}
    nats_sd = [c for job in prometheus["scrape_configs"] for c in job.get("dns_sd_configs", [])]
    assert {n for c in nats_sd for n in c["names"]} == {f"fugato-nats{i}" for i in (1, 2, 3)}
    promtool = shutil.which("promtool")
    assert promtool, "promtool comes with Debian's prometheus package (tests/run.sh installs it)"
    checked = subprocess.run([promtool, "check", "config", "prometheus-compose.yml"], capture_output=True, text=True,
                             cwd=REPO / "conf" / "prometheus", timeout=60, check=False)
    assert checked.returncode == 0, checked.stdout + checked.stderr

    provisioning = mounts["/etc/grafana/provisioning"]
    (datasource,) = yaml.safe_load((provisioning / "datasources" / "prometheus.yml").read_text())["datasources"]
    assert datasource["type"] == "prometheus" and datasource["url"] == "http://prometheus:9090"
    (provider,) = yaml.safe_load((provisioning / "dashboards" / "fugato.yml").read_text())["providers"]
    dashboard = next(path for target, path in mounts.items() if target.startswith(provider["options"]["path"] + "/"))
    assert dashboard == REPO / "conf" / "grafana" / "fugato.json"
    assert json.loads(dashboard.read_text())["title"]
