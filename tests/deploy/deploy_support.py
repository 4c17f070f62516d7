"""Shared by the deployment tests: paths, a ``Helm`` runner that renders the chart into parsed documents, and
small lookups over rendered objects. Nothing here needs a cluster."""

from __future__ import annotations

import os
import subprocess
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import yaml
from deploy_tools import REPO

CHART = REPO / "helm" / "fugato"
VALUES_HA = CHART / "values-ha.yaml"
VALUES_NATS = CHART / "values-nats.yaml"
# Schemas checked: the chart's minimum (Chart.yaml kubeVersion) and a recent release.
KUBE_VERSIONS = ("1.25.0", "1.35.0")


class Helm:
    """One helm binary with a private home, and no kubeconfig: it can only work offline."""

    def __init__(self, binary: Path, home: Path) -> None:
        self.binary = binary
        self.env = {**os.environ, "KUBECONFIG": str(home / "no-kubeconfig"),
                    "HELM_CACHE_HOME": str(home / "cache"), "HELM_CONFIG_HOME": str(home / "config"),
                    "HELM_DATA_HOME": str(home / "data")}

    def run(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        proc = subprocess.run([str(self.binary), *args], env=self.env, capture_output=True, text=True, timeout=60,
                              check=False)
        if check and proc.returncode != 0:
            raise AssertionError(f"helm {' '.join(args)} exited {proc.returncode}\n{proc.stdout}\n{proc.stderr}")
        return proc

    def template_args(self, values: Sequence[Path] = (), sets: Sequence[str] = (), release: str = "fugato",
                      kube_version: str = "1.30.0") -> list[str]:
        args = ["template", release, str(CHART), "--namespace", "realtime", "--kube-version", kube_version,
                "--api-versions", "monitoring.coreos.com/v1"]
        for path in values:
            args += ["-f", str(path)]
        for item in sets:
            args += ["--set", item]
        return args

    def template(self, values: Sequence[Path] = (), sets: Sequence[str] = (), release: str = "fugato") -> str:
        return self.run(*self.template_args(values, sets, release)).stdout

    def render(self, values: Sequence[Path] = (), sets: Sequence[str] = (),
               release: str = "fugato") -> list[dict[str, Any]]:
        return [d for d in yaml.safe_load_all(self.template(values, sets, release)) if d]


def by_kind(docs: Sequence[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [d for d in docs if d["kind"] == kind]


def one(docs: Sequence[dict[str, Any]], kind: str) -> dict[str, Any]:
    found = by_kind(docs, kind)
    assert len(found) == 1, f"expected one {kind}, got {len(found)}"
    return found[0]
