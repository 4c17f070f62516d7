"""The Grafana dashboard, the Prometheus alert rules and scrape configs, checked offline: every query parses
(``promtool check rules``), the alert rules pass their ``promtool test rules`` cases, and every metric they name
is one that a live server exports, with one worker and with two workers under supervisord."""

from __future__ import annotations

import asyncio
import json
import re
import shutil
import subprocess
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import yaml
from deploy_tools import REPO
from harness import ServerFactory, ServerProcess
from prometheus_client.parser import text_string_to_metric_families
from redis_servers import RedisStandalone

DASHBOARD = REPO / "conf" / "grafana" / "fugato.json"
PROMETHEUS_DIR = REPO / "conf" / "prometheus"
ALERTS = PROMETHEUS_DIR / "fugato-alerts.yml"
# Grafana's variables, replaced by values promtool can parse.
DASHBOARD_VARIABLES = {"$__rate_interval": "1m", "$__interval": "1m", "$__range": "1h", "$instance": ".*",
                       "$quantile": "0.99"}
NOT_EXPORTED_BY_FUGATO = {"up"}  # Prometheus' own series for every target

_KEYWORDS = {"by", "without", "on", "ignoring", "group_left", "group_right", "and", "or", "unless", "offset",
             "bool", "inf", "nan"}


def metric_names(expr: str) -> set[str]:
    """Metric names a PromQL expression selects (functions, keywords, labels and durations left out)."""
    text = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)
    text = re.sub(r"\[[^\]]*\]", "", text)
    text = re.sub(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", "", text)
    text = re.sub(r"\{[^}]*\}", "", text)
    names = set()
    for m in re.finditer(r"(?<![\w.$])[a-zA-Z_:][a-zA-Z0-9_:]*", text):
        if m.group(0).lower() in _KEYWORDS or re.match(r"\s*\(", text[m.end():]):
            continue
        names.add(m.group(0))
    return names


def dashboard() -> dict[str, Any]:
    data: dict[str, Any] = json.loads(DASHBOARD.read_text())
    return data


def dashboard_panels() -> list[dict[str, Any]]:
    return [p for p in dashboard()["panels"] if p["type"] != "row"]


def dashboard_exprs() -> list[str]:
    exprs = [t["expr"] for p in dashboard_panels() for t in p["targets"]]
    for var in dashboard()["templating"]["list"]:
        if var["type"] == "query":
            exprs.append(var["definition"].replace("label_values(", "group by (instance) (").replace(
                ", instance)", ")"))
    return exprs


def alert_exprs() -> list[str]:
    groups = yaml.safe_load(ALERTS.read_text())["groups"]
    return [rule["expr"] for group in groups for rule in group["rules"]]


def substituted(expr: str) -> str:
    for var, value in DASHBOARD_VARIABLES.items():
        expr = expr.replace(var, value)
    assert "$" not in expr, f"unknown Grafana variable in {expr!r}"
    return expr


def exported_names(exposition: str) -> set[str]:
    """Every series name the exposition can carry, also for labelled families that have no sample yet."""
    names = set()
    for family in text_string_to_metric_families(exposition):
        names.update(sample.name for sample in family.samples)
        if family.type == "counter":
            names.add(family.name + "_total")
        elif family.type == "histogram":
            names.update(family.name + suffix for suffix in ("_bucket", "_count", "_sum"))
        else:
            names.add(family.name)
    return names


def scrape(server: ServerProcess) -> str:
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    with opener.open(f"{server.http_url}/metrics", timeout=5) as resp:
        return str(resp.read().decode())


def promtool(*args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    binary = shutil.which("promtool")
    assert binary is not None, "promtool is installed by tests/run.sh (Debian package prometheus)"
    return subprocess.run([binary, *args], input=stdin, capture_output=True, text=True, timeout=60, check=False)


def process_samples(exposition: str) -> dict[str, str]:
    """worker -> pid of the process_cpu_seconds_total series."""
    for family in text_string_to_metric_families(exposition):
        if family.name == "process_cpu_seconds":
            return {s.labels["worker"]: s.labels["pid"] for s in family.samples}
    return {}


# --- live servers --------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def single(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[ServerProcess, str]]:
    factory = ServerFactory(tmp_path_factory.mktemp)
    server = factory.start_sync({"prometheus": {"enabled": True}}, name="single")
    yield server, scrape(server)
    factory.close_sync()


def dockerfile_copies(source_dir: str) -> list[str]:
    """What the Dockerfile copies from ``source_dir`` of the build context (COPY lines without --from)."""
    files = []
    for line in (REPO / "Dockerfile").read_text().splitlines():
        parts = line.split()
        if parts[:1] == ["COPY"] and not any(p.startswith("--from") for p in parts):
            files += [p for p in parts[1:-1] if p.startswith(source_dir + "/")]
    return files


@pytest.fixture(scope="module")
def image_like_workers(tmp_path_factory: pytest.TempPathFactory,
                       redis_standalone: RedisStandalone) -> Iterator[tuple[ServerProcess, str, Path, Path]]:
    """Two workers under supervisord laid out as in the container image: supervisord's files are only the
    ones the Dockerfile copies, found through FUGATO_SUPERVISOR_DIR, and every runtime file goes to TMPDIR."""
    supervisor_dir = tmp_path_factory.mktemp("opt-fugato") / "supervisor"
    supervisor_dir.mkdir()
    for rel in dockerfile_copies("supervisor"):
        shutil.copy(REPO / rel, supervisor_dir)
    tmpdir = tmp_path_factory.mktemp("writable-tmp")
    factory = ServerFactory(tmp_path_factory.mktemp)
    config = {"prometheus": {"enabled": True}, "client": {"ping_interval": "500ms", "pong_timeout": "400ms"},
              "engine": {"type": "redis", "redis": {"address": [redis_standalone.url], "prefix": "fgtdeploy"}}}
    server = factory.start_sync(config, name="workers", extra_args=("--workers", "2"),
                                env={"FUGATO_SUPERVISOR_DIR": str(supervisor_dir), "TMPDIR": str(tmpdir)})
    # In multiprocess mode a labelled metric appears once it has a value: produce traffic of every kind.
    asyncio.run(exercise(server))
    wanted = set().union(*(metric_names(e) for e in [*dashboard_exprs(), *alert_exprs()])) - NOT_EXPORTED_BY_FUGATO
    deadline = time.monotonic() + 20
    exposition = scrape(server)
    while (len(process_samples(exposition)) < 2 or not wanted <= exported_names(exposition)) \
            and time.monotonic() < deadline:
        time.sleep(0.1)  # the second worker may still be starting; pongs and disconnects land a bit later
        exposition = scrape(server)
    yield server, exposition, supervisor_dir, tmpdir
    factory.close_sync()


async def exercise(server: ServerProcess) -> None:
    """A connection with a ping/pong, a recovery, a reply error and a server disconnect; API publishes that
    reach it and one that fails."""
    async with aiohttp.ClientSession() as session, session.ws_connect(server.ws_url) as ws:
        async def reply(cmd_id: int) -> dict[str, Any]:
            while True:
                for line in (await asyncio.wait_for(ws.receive_str(), 10)).splitlines():
                    message = json.loads(line)
                    if message == {}:
                        await ws.send_str("{}")  # answer the server's ping
                    elif message.get("id") == cmd_id:
                        return dict(message)

        await ws.send_str(json.dumps({"id": 1, "connect": {"token": server.token("metrics-user")}}))
        assert "connect" in await reply(1)
        await ws.send_str(json.dumps({"id": 2, "subscribe": {"channel": "chat:metrics", "recoverable": True,
                                                             "recover": True, "epoch": "gone", "offset": 3}}))
        assert "subscribe" in await reply(2)
        await ws.send_str(json.dumps({"id": 3, "subscribe": {"channel": "nowhere:metrics"}}))
        assert "error" in await reply(3)
        await server.api("publish", {"channel": "chat:metrics", "data": {"n": 1}})
        await server.api("publish", {"channel": "nowhere:metrics", "data": {"n": 2}})
        await ws.send_str(json.dumps({"id": 4, "presence_stats": {"channel": "chat:metrics"}}))
        await reply(4)  # reads (and answers) at least one ping on the way: ping_interval is 500ms
        await asyncio.sleep(0.6)
        await ws.send_str(json.dumps({"id": 5, "presence_stats": {"channel": "chat:metrics"}}))
        await reply(5)
        await server.api("disconnect", {"user": "metrics-user"})
        await asyncio.wait_for(ws.receive(), 10)


# --- the dashboard -------------------------------------------------------------------------------------------

def test_metric_name_extraction() -> None:
    assert metric_names('histogram_quantile(0.99, sum by (le, method) (rate(a_bucket{x=~"$i", y="by(z)"}[1m])))') \
        == {"a_bucket"}
    assert metric_names("sum(rate(a_total[5m])) / ignoring(code) b > 1/60 and on(instance) c offset 1h") \
        == {"a_total", "b", "c"}
    assert metric_names("time() - max(process_start_time_seconds)") == {"process_start_time_seconds"}
    assert metric_names("count(up{job=~\".*fugato.*\"} == 0) > 1e3") == {"up"}


def test_dashboard_is_well_formed() -> None:
    data = dashboard()
    assert data["uid"] == "fugato-overview" and data["title"] == "Fugato"
    assert isinstance(data["schemaVersion"], int)
    variables = {v["name"]: v for v in data["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource" and variables["datasource"]["query"] == "prometheus"
    assert variables["instance"]["allValue"] == ".*"
    assert variables["quantile"]["current"]["value"] in variables["quantile"]["query"].split(",")
    ids = [p["id"] for p in data["panels"]]
    assert len(ids) == len(set(ids))
    cells: dict[tuple[int, int], int] = {}
    for panel in data["panels"]:
        assert panel["type"] in {"row", "stat", "timeseries"}
        grid = panel["gridPos"]
        assert all(isinstance(grid[k], int) for k in ("x", "y", "w", "h"))
        assert grid["x"] >= 0 and grid["x"] + grid["w"] <= 24
        for x in range(grid["x"], grid["x"] + grid["w"]):
            for y in range(grid["y"], grid["y"] + grid["h"]):
                assert (x, y) not in cells, f"panels {cells[(x, y)]} and {panel['id']} overlap"
                cells[(x, y)] = panel["id"]
        if panel["type"] != "row":
            assert panel["title"] and panel["description"]
            assert panel["datasource"] == {"type": "prometheus", "uid": "${datasource}"}
            assert panel["targets"], panel["title"]
            for target in panel["targets"]:
                assert target["expr"].strip() and target["datasource"] == panel["datasource"]


def test_dashboard_queries_parse_with_promtool(tmp_path: Path) -> None:
    exprs = dashboard_exprs()
    rules = {"groups": [{"name": "dashboard", "rules": [
        {"record": f"fugato_dashboard:query_{i}", "expr": substituted(e)} for i, e in enumerate(exprs)]}]}
    path = tmp_path / "dashboard-rules.yml"
    path.write_text(yaml.safe_dump(rules))
    proc = promtool("check", "rules", str(path))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert f"SUCCESS: {len(exprs)} rules found" in proc.stdout
    # promtool does reject a broken query:
    rules["groups"][0]["rules"].append({"record": "fugato_dashboard:broken", "expr": "sum(rate(x[1m])"})
    path.write_text(yaml.safe_dump(rules))
    assert promtool("check", "rules", str(path)).returncode != 0


def test_every_dashboard_selector_follows_the_pod_variable() -> None:
    for panel in dashboard_panels():
        for target in panel["targets"]:
            selectors = re.findall(r"[a-zA-Z_:][a-zA-Z0-9_:]*\{([^}]*)\}", target["expr"])
            assert selectors and all('instance=~"$instance"' in s for s in selectors), target["expr"]
            if "histogram_quantile" in target["expr"]:
                assert "$quantile" in target["expr"] and "_bucket{" in target["expr"]
                assert re.search(r"by \(le[,)]", target["expr"]), target["expr"]


def test_dashboard_shows_what_operators_need() -> None:
    used = set().union(*(metric_names(e) for e in dashboard_exprs()))
    assert used >= {
        "centrifugo_node_num_clients", "centrifugo_node_num_users", "centrifugo_node_num_subscriptions",
        "centrifugo_node_num_channels", "centrifugo_node_build",
        "centrifugo_client_command_duration_seconds_count", "centrifugo_client_command_duration_seconds_bucket",
        "centrifugo_client_num_reply_errors_total",
        "centrifugo_api_command_duration_seconds_count", "centrifugo_api_command_duration_seconds_bucket",
        "centrifugo_api_command_errors_total",
        "centrifugo_node_messages_sent_count_total", "centrifugo_node_messages_received_count_total",
        "centrifugo_node_broadcast_duration_seconds_bucket", "centrifugo_node_pub_sub_lag_seconds_bucket",
        "centrifugo_client_ping_pong_duration_seconds_bucket",
        "centrifugo_client_num_server_disconnects_total", "centrifugo_client_recover_total",
        "process_cpu_seconds_total", "process_resident_memory_bytes", "process_open_fds",
        "process_start_time_seconds",
    }
    per_worker = [t["expr"] for p in dashboard_panels() for t in p["targets"] if "process_" in t["expr"]
                  and p["type"] == "timeseries"]
    assert per_worker and all("worker" in e for e in per_worker)


# --- alert rules and scrape configs ----------------------------------------------------------------------------

def test_alert_rules_parse_and_pass_their_unit_tests() -> None:
    proc = promtool("check", "rules", str(ALERTS))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    names = {r["alert"] for g in yaml.safe_load(ALERTS.read_text())["groups"] for r in g["rules"]}
    assert {"FugatoNodeDown", "FugatoEngineErrors", "FugatoPubSubErrors", "FugatoPubSubLagHigh",
            "FugatoSlowDisconnectsRising"} <= names
    proc = subprocess.run([str(shutil.which("promtool")), "test", "rules", "fugato-alerts.test.yml"],
                          cwd=PROMETHEUS_DIR, capture_output=True, text=True, timeout=60, check=False)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    tested = set(re.findall(r"alertname: (\w+)", (PROMETHEUS_DIR / "fugato-alerts.test.yml").read_text()))
    assert tested == names


def test_prometheus_configs(tmp_path: Path) -> None:
    proc = promtool("check", "config", str(PROMETHEUS_DIR / "prometheus.yml"))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    # Debian's promtool is built without Kubernetes discovery: check the rest of the Kubernetes example with a
    # static target in its place.
    config = yaml.safe_load((PROMETHEUS_DIR / "prometheus-kubernetes.yml").read_text())
    job = config["scrape_configs"][0]
    assert job["kubernetes_sd_configs"] == [{"role": "endpoints"}]
    assert job["relabel_configs"][0]["regex"] == "fugato;internal;internal"
    job["static_configs"] = [{"targets": ["127.0.0.1:9000"]}]
    del job["kubernetes_sd_configs"]
    (tmp_path / "prometheus.yml").write_text(yaml.safe_dump(config))
    shutil.copy(ALERTS, tmp_path)
    proc = promtool("check", "config", str(tmp_path / "prometheus.yml"))
    assert proc.returncode == 0, proc.stdout + proc.stderr


# --- against live servers ----------------------------------------------------------------------------------

def test_queries_name_only_metrics_a_single_server_exports(single: tuple[ServerProcess, str]) -> None:
    exported = exported_names(single[1])
    for expr in [*dashboard_exprs(), *alert_exprs()]:
        missing = metric_names(expr) - exported - NOT_EXPORTED_BY_FUGATO
        assert not missing, f"{expr!r} names metrics /metrics does not have: {missing}"


def test_queries_name_only_metrics_a_worker_group_exports(
        image_like_workers: tuple[ServerProcess, str, Path, Path]) -> None:
    exported = exported_names(image_like_workers[1])
    for expr in [*dashboard_exprs(), *alert_exprs()]:
        missing = metric_names(expr) - exported - NOT_EXPORTED_BY_FUGATO
        assert not missing, f"{expr!r} names metrics /metrics does not have: {missing}"


def test_process_metrics_per_worker(single: tuple[ServerProcess, str],
                                    image_like_workers: tuple[ServerProcess, str, Path, Path]) -> None:
    server, exposition = single
    assert process_samples(exposition) == {"0": str(server.pid)}
    workers = process_samples(image_like_workers[1])
    assert sorted(workers) == ["0", "1"]
    for pid in workers.values():
        assert "--worker-index" in Path(f"/proc/{pid}/cmdline").read_text(errors="replace")
    for exposition_text in (exposition, image_like_workers[1]):
        proc = promtool("check", "metrics", stdin=exposition_text)
        assert proc.returncode == 0, proc.stdout + proc.stderr


def test_workers_run_from_the_image_layout(image_like_workers: tuple[ServerProcess, str, Path, Path]) -> None:
    server, _, supervisor_dir, tmpdir = image_like_workers
    # supervisord runs with the configuration from the directory the image names, not from the checkout ...
    supervisords = [p for p in Path("/proc").iterdir() if p.name.isdigit()
                    and str(supervisor_dir / "supervisord.conf") in _cmdline(p)]
    assert supervisords
    # ... and keeps its socket, pid file and the metrics files under TMPDIR (the chart's /tmp emptyDir).
    run_dirs = [p for p in tmpdir.glob("fugato-*") if p.is_dir()]
    assert len(run_dirs) == 1
    assert {"supervisord.pid", "supervisor.sock", "metrics"} <= {p.name for p in run_dirs[0].iterdir()}
    assert any(run_dirs[0].joinpath("metrics").iterdir())
    assert server.running


def _cmdline(proc_dir: Path) -> str:
    try:
        return (proc_dir / "cmdline").read_text(errors="replace").replace("\0", " ")
    except OSError:
        return ""
