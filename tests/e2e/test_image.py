"""whoexec's image, built from the repository's own Dockerfile by ``e2e/image`` (buildah
bud, offline, on bases made from Debian's packages), as the cluster runs it: what it
holds, who it runs as, and that its programs run. Nothing here needs the cluster."""

from __future__ import annotations

import json
import os
import subprocess
import tarfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from .harness import ROOT

pytestmark = pytest.mark.e2e

IMAGE = ROOT / "e2e" / "image"
CACHE = Path(os.environ.get("WHOEXEC_E2E_CACHE", "/var/cache/whoexec-e2e"))
STORAGE = ["--storage-driver", "vfs", "--root", str(CACHE / "buildah")]
STORAGE += ["--runroot", str(CACHE / "buildah-run")]
#: what the image may weigh, unpacked (measured: see the README's "Deploying to a cluster")
BUDGET_MB = 300


def buildah(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    done = subprocess.run(
        ["buildah", *STORAGE, *args], capture_output=True, text=True, timeout=600, check=False
    )
    if check:
        assert done.returncode == 0, f"buildah {' '.join(args)}: {done.stderr}"
    return done


@pytest.fixture(scope="module")
def archive(tmp_path_factory) -> tuple[str, Path]:
    out = tmp_path_factory.mktemp("image") / "whoexec.tar"
    done = subprocess.run(
        [str(IMAGE), "build", str(out)], capture_output=True, text=True, timeout=3600, check=False
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return done.stdout.strip(), out


@pytest.fixture(scope="module")
def config(archive) -> dict[str, Any]:
    """The OCI image config in the archive that the cluster imports."""
    _, path = archive
    with tarfile.open(path) as tar:

        def blob(digest: str) -> Any:
            member = tar.extractfile("blobs/sha256/" + digest.split(":", 1)[1])
            assert member is not None
            return json.load(member)

        index = json.load(tar.extractfile("index.json"))  # type: ignore[arg-type]
        manifest = blob(index["manifests"][0]["digest"])
        return blob(manifest["config"]["digest"])  # type: ignore[no-any-return]


@pytest.fixture(scope="module")
def container(archive) -> Iterator[str]:
    """One working container of the image (with vfs each one is a full copy)."""
    name, _ = archive
    made = buildah("from", "--pull-never", name).stdout.strip()
    try:
        yield made
    finally:
        buildah("umount", made, check=False)
        buildah("rm", made, check=False)


@pytest.fixture(scope="module")
def rootfs(container) -> Path:
    return Path(buildah("mount", container).stdout.strip())


def run(container: str, *command: str) -> subprocess.CompletedProcess[str]:
    """A command in the image as its user, with no network."""
    return buildah("run", "--user", "10001:10001", "--network", "none", container, "--", *command)


def test_the_image_is_named_as_the_kustomize_base_and_the_chart_name_it(archive):
    import yaml

    name, _ = archive
    base = yaml.safe_load((ROOT / "manifests" / "base" / "kustomization.yaml").read_text())
    (image,) = base["images"]
    assert name == f"{image['newName']}:{image['newTag']}"
    values = yaml.safe_load((ROOT / "manifests" / "chart" / "values.yaml").read_text())
    chart = yaml.safe_load((ROOT / "manifests" / "chart" / "Chart.yaml").read_text())
    assert name == f"{values['image']['repository']}:{chart['appVersion']}"


def test_it_runs_whoexec_serve_by_default_as_a_numeric_non_root_user(config):
    assert config["config"]["User"] == "10001:10001"
    assert config["config"]["Entrypoint"] == ["whoexec"]
    assert config["config"]["Cmd"] == ["serve"]
    assert config["config"]["Labels"]["org.opencontainers.image.title"] == "whoexec"


def test_whoexec_and_its_commands_run_in_the_image_as_that_user(container):
    assert "0.1.0" in run(container, "whoexec", "--version").stdout
    assert run(container, "id", "-u").stdout == "10001\n"
    for command in ("serve", "consume", "ui", "sessions"):
        assert run(container, "whoexec", command, "--help").stdout.startswith("Usage: whoexec")
    # the native wheels import: cryptography, orjson, psycopg's binary libpq, gevent, uvloop
    imports = "import cryptography.hazmat.bindings._rust, orjson, psycopg, gevent, uvloop"
    done = run(container, "python", "-c", imports + "; print(psycopg.pq.__impl__)")
    assert done.stdout == "binary\n"


def test_the_static_env_and_the_falco_plugin_are_where_their_users_copy_them_from(rootfs):
    env = rootfs / "opt" / "whoexec" / "static" / "env"
    head = env.read_bytes()[:4096]
    assert head.startswith(b"\x7fELF")
    assert b"/lib64/ld-linux" not in head, "static: no program interpreter"
    assert (rootfs / "opt/whoexec/plugin/libwhoexec.so").read_bytes().startswith(b"\x7fELF")


def test_nothing_the_runtime_does_not_need_is_in_the_image(rootfs):
    for tool in ("gcc", "cc", "cargo", "rustc", "ld", "make", "git", "curl", "wget"):
        assert not (rootfs / "usr/bin" / tool).exists(), tool
    venv = rootfs / "opt" / "whoexec"
    assert not list(venv.glob("bin/pip*")), "pip installs; the runtime does not"
    assert not list(venv.glob("lib/python*/site-packages/pip")), "pip"
    assert not list(venv.glob("lib/python*/site-packages/setuptools")), "setuptools"
    assert not (rootfs / "src").exists(), "the build's sources stay in the build stages"
    assert not (rootfs / "root/.cargo").exists()
    # the repository's tests, keys and certs never go in (.dockerignore)
    site = next(venv.glob("lib/python*/site-packages"))
    assert not (site / "tests").exists()
    assert [p.name for p in rootfs.rglob("*.key")] == []
    assert not list(rootfs.glob("opt/whoexec/lib/python*/site-packages/kubernetes/aio"))


def test_the_image_stays_within_its_size_budget(rootfs):
    size = sum(p.lstat().st_size for p in rootfs.rglob("*") if p.is_file() and not p.is_symlink())
    assert size < BUDGET_MB * 1024 * 1024, f"{size / 2**20:.0f} MB"
