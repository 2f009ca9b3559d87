"""There is no Docker engine on these machines: the Dockerfile's promises are checked as text."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).parent.parent
DOCKERFILE = (ROOT / "Dockerfile").read_text()
STAGES = re.split(r"^FROM ", DOCKERFILE, flags=re.M)[1:]


def test_multi_stage_on_one_slim_python_base_and_a_rust_stage_for_the_plugin():
    assert [stage.splitlines()[0] for stage in STAGES] == [
        "${PYTHON_IMAGE} AS staticenv",
        "${PYTHON_IMAGE} AS build",
        "${RUST_IMAGE} AS plugin",
        "${PYTHON_IMAGE}",
    ]


def test_the_bases_are_build_arguments_that_default_to_the_public_images():
    # e2e/image sets them to equivalents built from Debian's packages
    preamble = re.split(r"^FROM ", DOCKERFILE, flags=re.M)[0]
    assert re.findall(r"^ARG (\w+)=(\S+)$", preamble, re.M) == [
        ("PYTHON_IMAGE", "python:3.11-slim-bookworm"),
        ("RUST_IMAGE", "rust:1-slim-bookworm"),
    ]


def test_final_image_has_no_compilers_and_runs_as_a_numeric_non_root_user():
    final = STAGES[-1]
    assert not re.search(r"\b(gcc|g\+\+|build-essential|clang|apt-get install)\b", final)
    # the Python stage builds nothing from source; only the static env's stage compiles
    assert not re.search(r"\b(gcc|g\+\+|build-essential|clang)\b", STAGES[1])
    user = re.search(r"^USER (\d+):(\d+)$", final, re.M)
    assert user is not None and int(user.group(1)) != 0
    assert "--only-binary=:all:" in STAGES[1], "no source builds in the build stage either"


def test_entrypoint_is_whoexec_defaulting_to_serve_with_oci_labels():
    final = STAGES[-1]
    assert 'ENTRYPOINT ["whoexec"]' in final
    assert 'CMD ["serve"]' in final
    for label in ("title", "description", "version", "licenses", "source"):
        assert f"org.opencontainers.image.{label}=" in final


def test_dockerignore_keeps_keys_certs_venvs_and_tests_out():
    rules = [
        line.strip()
        for line in (ROOT / ".dockerignore").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    assert rules[0] == "*", "everything is excluded first"
    allowed = {rule[1:].rstrip("/") for rule in rules if rule.startswith("!")}
    plugin = {"plugin/Cargo.toml", "plugin/Cargo.lock", "plugin/src", "bench/plugin_runner.rs"}
    assert allowed == {"pyproject.toml", "README.md", "webhook", "staticenv"} | plugin
    for copied in re.findall(r"^COPY (?!--from)(.+) /src/?\S*$", DOCKERFILE, re.M):
        for source in copied.split():
            assert source.rstrip("/") in allowed, source


def test_the_falco_plugin_is_built_in_its_own_stage_and_shipped_where_falco_copies_it_from():
    import yaml

    (rust,) = [stage for stage in STAGES if stage.startswith("${RUST_IMAGE}")]
    assert rust.startswith("${RUST_IMAGE} AS plugin")
    assert "cargo build --release --locked" in rust
    shipped = "/opt/whoexec/plugin/libwhoexec.so"
    assert f"COPY --from=plugin /src/plugin/target/release/libwhoexec.so {shipped}" in STAGES[-1]
    values = yaml.safe_load((ROOT / "manifests" / "falco" / "values-plugin.yaml").read_text())
    (init,) = values["extra"]["initContainers"]
    assert init["command"][:2] == ["cp", shipped]


def test_the_static_env_is_built_from_the_repo_and_shipped_where_the_init_container_copies_it():
    from webhook.admission.decide import STATIC_ENV_IN_IMAGE

    assert "busybox" not in DOCKERFILE, "BusyBox runs its own applets instead of the image's"
    assert "COPY staticenv /src/staticenv" in STAGES[0]
    assert f"sh /src/staticenv/build {STATIC_ENV_IN_IMAGE}" in STAGES[0]
    assert f"COPY --from=staticenv {STATIC_ENV_IN_IMAGE} {STATIC_ENV_IN_IMAGE}" in STAGES[-1]
