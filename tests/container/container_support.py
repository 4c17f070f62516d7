"""Podman for the container tests: the flags this kind of machine needs, the local base image made with
debootstrap (no registry is reachable), the images built on it, and the README's commands.

Facts of these machines, found by trying, and what is done about each:

* podman's default runtime crun refuses this kernel's hybrid cgroups: every podman call gets ``--runtime runc``.
* podman raises a container's ``nofile`` and ``nproc`` limits to 1048576 by default, above the hard limits
  here (root has no CAP_SYS_RESOURCE): ``--ulimit`` with the host's hard ``nofile`` and podman's own ``nproc``
  (podman lowers its own to 32768 at start, and a container cannot get more than its parent has).
* pip inside ``podman build`` reaches PyPI only with the host's CA bundle: it is mounted read-only into the
  RUN steps (``-v``), which leaves the image itself unchanged.
* ``--read-only`` alone makes podman mount writable tmpfs on /run, /tmp and /var/tmp, which Docker does not:
  ``--read-only-tmpfs=false`` gives Docker's meaning (only the README's ``--tmpfs /tmp`` is writable).
* ``podman build`` writes OCI images by default, which drop ``HEALTHCHECK``: ``--format docker`` keeps it.

Images are cached between runs: the base is tagged by a hash of its recipe (and its tarball kept in
``FUGATO_TEST_CACHE``, /var/cache/fugato-tests by default, outside the checkout), the others by a hash of
what they are built from, so a warm run builds nothing.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
import re
import resource
import shlex
import shutil
import subprocess
import tempfile
from collections.abc import Iterator, Sequence
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
CACHE = Path(os.environ.get("FUGATO_TEST_CACHE", "/var/cache/fugato-tests"))
SUITE = "bookworm"
BASE_PACKAGES = ("python3", "python3-venv", "python3-pip", "python-is-python3", "ca-certificates")
CA_BUNDLE = "/etc/ssl/certs/ca-certificates.crt"
PODMAN_NPROC = 32768  # podman sets its own RLIMIT_NPROC to this at start
BUILD_TIMEOUT = 900.0

# Small images from the same base, for the services the cluster needs (official images cannot be pulled).
SERVICE_CONTAINERFILES = {
    "redis": """FROM {base}
RUN apt-get update && apt-get install -y --no-install-recommends redis-server && rm -rf /var/lib/apt/lists/*
CMD ["redis-server", "--protected-mode", "no", "--save", "", "--appendonly", "no"]
""",
    # The official nats image's entrypoint is the server, so compose's `command` holds only its flags.
    "nats": """FROM {base}
RUN apt-get update && apt-get install -y --no-install-recommends nats-server && rm -rf /var/lib/apt/lists/*
ENTRYPOINT ["nats-server"]
""",
}



def podman() -> list[str]:
    return ["podman", "--runtime", "runc"]


def ulimit_flags() -> list[str]:
    nofile = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    nproc = min(resource.getrlimit(resource.RLIMIT_NPROC)[1], PODMAN_NPROC)
    if nproc == resource.RLIM_INFINITY:
        nproc = PODMAN_NPROC
    return ["--ulimit", f"nofile={nofile}:{nofile}", "--ulimit", f"nproc={nproc}:{nproc}"]


def run_flags() -> list[str]:
    """What ``podman run`` needs here on top of a ``docker run`` line."""
    return [*ulimit_flags(), "--read-only-tmpfs=false"]


def build_flags() -> list[str]:
    return ["--format", "docker", "-v", f"{CA_BUNDLE}:{CA_BUNDLE}:ro", *ulimit_flags()]


def sh(args: Sequence[str], timeout: float = 120.0, check: bool = True,
       env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(list(args), capture_output=True, text=True, timeout=timeout, check=False,
                          env=None if env is None else {**os.environ, **env})
    if check and proc.returncode != 0:
        raise AssertionError(f"{shlex.join(args)} exited {proc.returncode}\n{proc.stdout[-4000:]}\n"
                             f"{proc.stderr[-4000:]}")
    return proc


def image_exists(tag: str) -> bool:
    return sh([*podman(), "image", "exists", tag], check=False).returncode == 0


def image_size(tag: str) -> int:
    return int(sh([*podman(), "image", "inspect", "--format", "{{.Size}}", tag]).stdout.strip())


@contextlib.contextmanager
def cache_lock(name: str) -> Iterator[None]:
    """One builder at a time per image, across the test sessions sharing this machine."""
    CACHE.mkdir(parents=True, exist_ok=True)
    with open(CACHE / f"{name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        yield


# --- the base image ------------------------------------------------------------------------------------------

def debian_mirror(apt_dir: Path = Path("/etc/apt")) -> str:
    """The Debian mirror apt itself uses for ``SUITE`` (deb822 ``.sources`` files or one-line lists)."""
    for path in sorted(apt_dir.glob("sources.list.d/*.sources")):
        for stanza in re.split(r"\n\s*\n", path.read_text()):
            fields = dict(re.findall(r"^([\w-]+):\s*(.*)$", stanza, re.M))
            if ("deb" in fields.get("Types", "").split() and SUITE in fields.get("Suites", "").split()
                    and fields.get("Enabled", "yes") != "no"):
                return fields["URIs"].split()[0]
    lists = [apt_dir / "sources.list", *sorted(apt_dir.glob("sources.list.d/*.list"))]
    for path in (p for p in lists if p.exists()):
        for line in path.read_text().splitlines():
            match = re.match(r"\s*deb\s+(?:\[[^]]*\]\s+)?(\S+)\s+(\S+)", line)
            if match and match.group(2) == SUITE:
                return match.group(1)
    raise AssertionError(f"no apt source for Debian {SUITE} under {apt_dir}: cannot debootstrap a base image")


def base_recipe(mirror: str) -> str:
    return f"debootstrap --variant=minbase --include={','.join(BASE_PACKAGES)} {SUITE} {mirror}"


def short_hash(*parts: str | bytes) -> str:
    digest = hashlib.sha256()
    for part in parts:
        digest.update(part.encode() if isinstance(part, str) else part)
        digest.update(b"\0")
    return digest.hexdigest()[:12]


def base_image() -> str:
    """``localhost/fugato-test-base:<recipe hash>``: Debian minbase with Python, from the tarball cache or a
    fresh debootstrap."""
    mirror = debian_mirror()
    key = short_hash(base_recipe(mirror), "apt clean, no lists")
    tag = f"localhost/fugato-test-base:{key}"
    if image_exists(tag):
        return tag
    with cache_lock(f"base-{key}"):
        if image_exists(tag):
            return tag
        tarball = CACHE / f"base-{key}.tar"
        if not tarball.exists():
            _debootstrap(mirror, tarball)
        sh([*podman(), "import", str(tarball), tag], timeout=BUILD_TIMEOUT)
    return tag


def _debootstrap(mirror: str, tarball: Path) -> None:
    with tempfile.TemporaryDirectory(dir=CACHE, prefix="rootfs-") as tmp:
        root = Path(tmp) / "root"
        sh(["debootstrap", "--variant=minbase", f"--include={','.join(BASE_PACKAGES)}", SUITE, str(root), mirror],
           timeout=BUILD_TIMEOUT)
        # The packages are installed; their .debs and the index files only make the image bigger.
        for leftover in [*root.glob("var/cache/apt/archives/*.deb"), *root.glob("var/lib/apt/lists/*")]:
            if leftover.is_file():
                leftover.unlink()
        partial = tarball.with_suffix(".partial")
        sh(["tar", "-C", str(root), "-cf", str(partial), "."], timeout=BUILD_TIMEOUT)
        partial.rename(tarball)


# --- images built on it --------------------------------------------------------------------------------------

def _tree_hash(paths: Sequence[str]) -> str:
    digest = hashlib.sha256()
    for rel in paths:
        path = REPO / rel
        files = [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file())
        for f in files:
            if "__pycache__" in f.parts or f.suffix == ".pyc":
                continue
            digest.update(f.relative_to(REPO).as_posix().encode() + b"\0" + f.read_bytes() + b"\0")
    return digest.hexdigest()[:12]


def image_inputs() -> list[str]:
    """The Dockerfile, .dockerignore and what the Dockerfile copies from the context: a change to any of them
    makes a new image tag."""
    copied = []
    for line in (REPO / "Dockerfile").read_text().splitlines():
        if line.startswith("COPY ") and "--from=" not in line:
            copied += line.split()[1:-1]
    return ["Dockerfile", ".dockerignore", *copied]


def fugato_image(base: str) -> str:
    """The project's Dockerfile built on ``base``; nothing is built when that exact source is already an image."""
    tag = f"localhost/fugato-test:{short_hash(base, _tree_hash(image_inputs()))}"
    if image_exists(tag):
        return tag
    with cache_lock("fugato-image"):
        if not image_exists(tag):
            sh([*podman(), "build", *build_flags(), "--build-arg", f"PYTHON_IMAGE={base}", "-t", tag, str(REPO)],
               timeout=BUILD_TIMEOUT)
            prune_old_images(keep=tag)
    return tag


def prune_old_images(keep: str) -> None:
    """Every source change makes a new image: drop the test images (and dangling build layers) built more than
    a day ago, so the disk does not fill up. podman refuses to remove one a container still uses."""
    old = sh([*podman(), "images", "--filter", "reference=localhost/fugato-test", "--filter", "until=24h",
              "--format", "{{.Repository}}:{{.Tag}}"], check=False).stdout.split()
    old = [tag for tag in old if tag != keep]
    if old:
        sh([*podman(), "rmi", *old], check=False)
    sh([*podman(), "image", "prune", "--force", "--filter", "until=24h"], check=False)


def service_image(name: str, base: str) -> str:
    containerfile = SERVICE_CONTAINERFILES[name].format(base=base)
    tag = f"localhost/fugato-test-{name}:{short_hash(containerfile)}"
    if image_exists(tag):
        return tag
    with cache_lock(f"{name}-image"), tempfile.TemporaryDirectory() as context:
        if not image_exists(tag):
            (Path(context) / "Containerfile").write_text(containerfile)
            sh([*podman(), "build", *build_flags(), "-t", tag, context], timeout=BUILD_TIMEOUT)
    return tag


# --- the README ----------------------------------------------------------------------------------------------

def readme_section(title: str) -> str:
    text = (REPO / "README.md").read_text()
    match = re.search(rf"^## {re.escape(title)}\n(.*?)(?=^## )", text, re.M | re.S)
    assert match is not None, f"README.md has no '## {title}' section"
    return match.group(1)


def readme_command(section: str, prefix: str) -> list[str]:
    """The first command of a bash block in the README's ``section`` that starts with ``prefix``, as argv."""
    for block in re.findall(r"```bash\n(.*?)```", readme_section(section), re.S):
        joined = re.sub(r"\\\n\s*", " ", block)
        for line in joined.splitlines():
            if line.startswith(prefix):
                return shlex.split(line.split(" #", 1)[0])
    raise AssertionError(f"README.md's '{section}' section has no command starting with {prefix!r}")


def which_podman_compose() -> str:
    venv_bin = Path(os.environ.get("VIRTUAL_ENV", REPO / ".venv")) / "bin" / "podman-compose"
    found = str(venv_bin) if venv_bin.exists() else shutil.which("podman-compose")
    assert found, "podman-compose is missing: it comes with the test extra (pip install -e '.[test]')"
    return found


# --- a running container -------------------------------------------------------------------------------------

class Container:
    """``podman run`` in the foreground (its exit code is the container's), with its output in a file."""

    def __init__(self, argv: Sequence[str], name: str, log_path: Path) -> None:
        self.argv = list(argv)
        self.name = name
        self.log_path = log_path
        self._log = open(log_path, "wb")  # noqa: SIM115 (closed in wait/remove)
        self.proc = subprocess.Popen(self.argv, stdin=subprocess.DEVNULL, stdout=self._log, stderr=subprocess.STDOUT)

    def log(self, tail: int = 4000) -> str:
        return f"$ {shlex.join(self.argv)}\n" + self.log_path.read_text(errors="replace")[-tail:]

    def init_pid(self) -> int:
        return int(sh([*podman(), "inspect", "--format", "{{.State.Pid}}", self.name]).stdout.strip())

    def processes(self) -> dict[int, tuple[int, str]]:
        """pid -> (real uid, command line) of every process in the container's PID namespace, from /proc."""
        namespace = os.readlink(f"/proc/{self.init_pid()}/ns/pid")
        out: dict[int, tuple[int, str]] = {}
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit():
                continue
            try:
                if os.readlink(entry / "ns" / "pid") != namespace:
                    continue
                uid = int(re.findall(r"^Uid:\s+(\d+)", (entry / "status").read_text(), re.M)[0])
                cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            except (OSError, IndexError):
                continue  # gone meanwhile
            out[int(entry.name)] = (uid, cmdline.strip())
        return out

    def exec(self, *command: str) -> subprocess.CompletedProcess[str]:
        return sh([*podman(), "exec", self.name, *command], check=False)

    def stop(self, timeout: float = 120.0) -> subprocess.CompletedProcess[str]:
        """``podman stop``: SIGTERM, then SIGKILL after the container's stop timeout (the run line's)."""
        return sh([*podman(), "stop", self.name], timeout=timeout, check=False)

    def wait(self, timeout: float) -> int:
        try:
            return self.proc.wait(timeout)
        finally:
            self._log.close()

    def remove(self) -> None:
        if self.proc.poll() is None:
            sh([*podman(), "rm", "--force", "--time", "0", self.name], check=False)
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.proc.wait(30)
        self._log.close()


if __name__ == "__main__":
    # `python tests/container/container_support.py base|redis|nats`: make (or find) that image, print its tag;
    # the README's podman commands use it.
    import sys
    wanted = sys.argv[1] if len(sys.argv) > 1 else "base"
    base_tag = base_image()
    print(base_tag if wanted == "base" else service_image(wanted, base_tag))
