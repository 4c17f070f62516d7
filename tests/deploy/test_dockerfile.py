"""The Dockerfile, read as text: what it copies exists and passes .dockerignore, its entrypoint is a command
line `fugato serve` accepts, its HEALTHCHECK asks the health module with the entrypoint's config, it agrees with
the Helm chart (user, ports, config path, writable /tmp), and every documented way to stop it waits longer than
the drain. tests/container builds and runs the image."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import yaml
from deploy_support import CHART, REPO

from node.cli import build_parser
from node.config import ShutdownConfig
from node.config_load import load

DOCKERFILE = REPO / "Dockerfile"


@dataclass
class Instruction:
    keyword: str
    args: str
    heredocs: list[str] = field(default_factory=list)


def parse(text: str) -> list[Instruction]:
    """Instructions with continuation lines joined and heredoc bodies collected (enough for our Dockerfile)."""
    out: list[Instruction] = []
    lines = iter(text.splitlines())
    pending = ""
    for line in lines:
        if not pending and (not line.strip() or line.lstrip().startswith("#")):
            continue
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        full = pending + line
        pending = ""
        keyword, _, args = full.strip().partition(" ")
        instruction = Instruction(keyword.upper(), args.strip())
        for marker in re.findall(r"<<-?'?(\w+)'?", args):
            body = []
            for body_line in lines:
                if body_line.strip() == marker:
                    break
                body.append(body_line)
            instruction.heredocs.append("\n".join(body))
        out.append(instruction)
    return out


INSTRUCTIONS = parse(DOCKERFILE.read_text())
FINAL_STAGE = INSTRUCTIONS[max(i for i, ins in enumerate(INSTRUCTIONS) if ins.keyword == "FROM"):]


def final(keyword: str) -> list[Instruction]:
    return [i for i in FINAL_STAGE if i.keyword == keyword]


def env() -> dict[str, str]:
    values: dict[str, str] = {}
    for ins in final("ENV"):
        for name, value in re.findall(r"(\w+)=(\S+)", ins.args):
            values[name] = value
    return values


def copies(stage: list[Instruction]) -> list[tuple[list[str], str]]:
    """(sources, destination) of the COPY instructions from the build context (not --from, not heredocs)."""
    out = []
    for ins in stage:
        if ins.keyword != "COPY" or "<<" in ins.args:
            continue
        parts = ins.args.split()
        if any(p.startswith("--from") for p in parts):
            continue
        parts = [p for p in parts if not p.startswith("--")]
        out.append((parts[:-1], parts[-1]))
    return out


def chart_values() -> dict[str, object]:
    values: dict[str, object] = yaml.safe_load((CHART / "values.yaml").read_text())
    return values


# --- .dockerignore ---------------------------------------------------------------------------------------------

def _pattern_regex(pattern: str) -> re.Pattern[str]:
    parts = []
    for piece in re.split(r"(\*\*/|\*\*|\*|\?)", pattern.strip("/")):
        parts.append({"**/": "(?:.*/)?", "**": ".*", "*": "[^/]*", "?": "[^/]"}.get(piece, re.escape(piece)))
    return re.compile("".join(parts))


def ignored(path: str, rules: list[str]) -> bool:
    """Docker's rule: the last pattern matching the path or one of its parent directories decides."""
    prefixes = ["/".join(path.split("/")[:n]) for n in range(1, path.count("/") + 2)]
    verdict = False
    for rule in rules:
        negate = rule.startswith("!")
        regex = _pattern_regex(rule[1:] if negate else rule)
        if any(regex.fullmatch(p) for p in prefixes):
            verdict = not negate
    return verdict


def dockerignore_rules() -> list[str]:
    lines = (REPO / ".dockerignore").read_text().splitlines()
    return [line.strip() for line in lines if line.strip() and not line.startswith("#")]


# --- tests -----------------------------------------------------------------------------------------------------

def test_two_stages_on_python_slim_and_a_non_root_user() -> None:
    froms = [i.args for i in INSTRUCTIONS if i.keyword == "FROM"]
    assert len(froms) == 2 and froms[0].endswith(" AS build")
    base = next(i.args for i in INSTRUCTIONS if i.keyword == "ARG" and i.args.startswith("PYTHON_IMAGE="))
    assert base.startswith("PYTHON_IMAGE=python:3.11-slim")
    security = chart_values()["podSecurityContext"]
    assert isinstance(security, dict)
    assert final("USER")[-1].args == f"{security['runAsUser']}:{security['runAsGroup']}"
    # The runtime stage gets the venv from the build stage: no compiler, no pip cache, no sources.
    assert any("--from=build /opt/fugato/venv" in i.args for i in final("COPY"))


def test_copied_paths_exist_and_pass_dockerignore() -> None:
    rules = dockerignore_rules()
    sources = [s for stage_copies in (copies(INSTRUCTIONS[:len(INSTRUCTIONS) - len(FINAL_STAGE)]),
                                      copies(FINAL_STAGE)) for srcs, _ in stage_copies for s in srcs]
    assert "node" in sources and "pyproject.toml" in sources
    for source in sources:
        path = REPO / source
        assert path.exists(), source
        files = [path] if path.is_file() else [p for p in path.rglob("*") if p.is_file()]
        for f in files:
            rel = f.relative_to(REPO).as_posix()
            if "__pycache__" in rel:
                assert ignored(rel, rules), rel
            else:
                assert not ignored(rel, rules), f"{rel} is copied but .dockerignore leaves it out"
    # The context stays small: the venv, the tests and the git history are not sent to the builder.
    for rel in (".venv/bin/python", "tests/run.sh", ".git/HEAD", "helm/fugato/values.yaml", "node/__pycache__/x.pyc"):
        assert ignored(rel, rules), rel


def test_the_package_files_the_image_installs_are_all_copied() -> None:
    # `pip install .` needs pyproject.toml, the readme it names, and the package with its data files.
    pyproject = (REPO / "pyproject.toml").read_text()
    readme = re.search(r'^readme = "([^"]+)"', pyproject, re.M)
    assert readme is not None
    build_sources = {s for srcs, _ in copies(INSTRUCTIONS[:len(INSTRUCTIONS) - len(FINAL_STAGE)]) for s in srcs}
    assert {"pyproject.toml", readme.group(1), "node"} <= build_sources
    assert list((REPO / "node" / "broker" / "lua").glob("*.lua"))  # package data under node/


def test_supervisord_files_are_where_fugato_looks_for_them() -> None:
    supervisor_dir = env()["FUGATO_SUPERVISOR_DIR"]
    copied = [(srcs, dest) for srcs, dest in copies(FINAL_STAGE) if any(s.startswith("supervisor/") for s in srcs)]
    assert len(copied) == 1
    srcs, dest = copied[0]
    assert dest.rstrip("/") == supervisor_dir
    assert sorted(Path(s).name for s in srcs) == ["supervisord.conf"]
    conf = (REPO / "supervisor" / "supervisord.conf").read_text()
    # The event listener is a module of the installed package, run by the same interpreter as the workers.
    assert "command=%(ENV_FUGATO_PYTHON)s -m node.workers" in conf


def test_entrypoint_is_a_command_line_fugato_serve_accepts() -> None:
    (entrypoint,) = final("ENTRYPOINT")
    argv = json.loads(entrypoint.args)  # exec form: signals reach tini, then fugato
    assert argv[:2] == ["/usr/bin/tini", "--"]
    assert argv[2:4] == ["fugato", "serve"]
    args, extra = build_parser().parse_known_args(argv[3:])
    assert extra == []
    assert args.command == "serve" and args.workers == "auto"
    help_text = subprocess.run([sys.executable, "-m", "node", "serve", "--help"], capture_output=True, text=True,
                               timeout=60, check=True).stdout
    for flag in (a for a in argv[4:] if a.startswith("--")):
        assert flag in help_text, flag
    # The chart mounts its ConfigMap (key config.json) on the directory of --config.
    config = Path(args.config)
    template = (CHART / "templates" / "deployment.yaml").read_text()
    assert f"mountPath: {config.parent}" in template
    assert config.name == "config.json" and "config.json:" in (CHART / "templates" / "configmap.yaml").read_text()


def test_the_default_config_in_the_image_is_valid(tmp_path: Path) -> None:
    (entrypoint,) = final("ENTRYPOINT")
    config_path = json.loads(entrypoint.args)[-1]
    run = next(i.args for i in final("RUN") if config_path in i.args)
    match = re.search(r"echo '([^']*)' > " + re.escape(config_path), run)
    assert match is not None
    body = match.group(1)
    path = tmp_path / "config.json"
    path.write_text(body)
    result = load(str(path), {}, {})
    assert result.warnings == ()
    assert result.config.health.enabled


def test_ports_and_writable_paths_match_the_chart() -> None:
    ports = chart_values()["ports"]
    assert isinstance(ports, dict)
    assert sorted(int(p) for i in final("EXPOSE") for p in i.args.split()) == sorted(
        [ports["external"], ports["internal"]])
    variables = env()
    assert variables["TMPDIR"] == "/tmp" and variables["HOME"] == "/tmp"
    assert "mountPath: /tmp" in (CHART / "templates" / "deployment.yaml").read_text()
    assert variables["PYTHONDONTWRITEBYTECODE"] == "1"  # a read-only root: no __pycache__ writes
    assert variables["PATH"].startswith("/opt/fugato/venv/bin:")


def test_healthcheck_runs_the_health_module_with_the_entrypoints_config() -> None:
    (healthcheck,) = final("HEALTHCHECK")
    options, _, command = healthcheck.args.partition("CMD ")
    argv = json.loads(command)
    (entrypoint,) = final("ENTRYPOINT")
    config_path = json.loads(entrypoint.args)[-1]
    assert argv == ["python", "-m", "node.healthcheck", "--config", config_path]
    assert "--start-period=" in options  # workers take a few seconds to start under load


def shutdown_drain_seconds() -> float:
    """What a stopping container may take: shutdown.timeout (default) plus supervisord's margin before KILL."""
    return ShutdownConfig().timeout + 5


def test_the_readme_run_line_and_compose_stop_later_than_the_drain() -> None:
    readme = (REPO / "README.md").read_text()
    run_lines = re.findall(r"^docker run .*$", readme, re.M)
    assert run_lines, "README.md has no docker run line"
    for run_line in run_lines:
        match = re.search(r"--stop-timeout (\d+)", run_line)
        assert match and int(match.group(1)) > shutdown_drain_seconds(), run_line
    compose = yaml.safe_load((REPO / "compose.yaml").read_text())
    fugato_services = [s for s in compose["services"].values() if "fugato" in str(s.get("image", ""))]
    assert len(fugato_services) >= 3
    for service in fugato_services:
        grace = service["stop_grace_period"]
        assert grace.endswith("s") and int(grace[:-1]) > shutdown_drain_seconds(), service
    comment = re.search(r"docker run .*--stop-timeout (\d+)", DOCKERFILE.read_text())
    assert comment and int(comment.group(1)) > shutdown_drain_seconds()


@pytest.mark.parametrize(("path", "expected"), [
    ("node/cli.py", False), ("node/__pycache__/cli.cpython-311.pyc", True), ("tests/harness.py", True),
    ("supervisor/supervisord.conf", False), ("supervisor/README.md", True), ("README.md", False),
])
def test_dockerignore_matching(path: str, expected: bool) -> None:
    assert ignored(path, dockerignore_rules()) is expected
