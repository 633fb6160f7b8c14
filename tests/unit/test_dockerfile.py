"""The operator image's Dockerfile, parsed by Docker's own parser (the `dockerfile`
package wraps buildkit's) and checked against the rules the chart relies on."""

from __future__ import annotations

from pathlib import Path

import dockerfile

ROOT = Path(__file__).resolve().parents[2]
CMDS = dockerfile.parse_file(str(ROOT / "operator" / "Dockerfile"))


def test_parses_and_is_multi_stage() -> None:
    froms = [c for c in CMDS if c.cmd == "FROM"]
    assert len(froms) == 2
    for f in froms:
        image = f.value[0]
        assert ":" in image and not image.endswith(":latest"), f"pin {image}"


def test_runs_as_the_non_root_user_the_chart_expects() -> None:
    final = CMDS[max(i for i, c in enumerate(CMDS) if c.cmd == "FROM") :]
    users = [c.value[0] for c in final if c.cmd == "USER"]
    assert users == ["65532:65532"]


def test_entrypoint_and_environment() -> None:
    assert [c.value for c in CMDS if c.cmd == "ENTRYPOINT"] == [("distillery",)]
    assert [c.value for c in CMDS if c.cmd == "CMD"] == [("run",)]
    env = [c.value for c in CMDS if c.cmd == "ENV"][-1]
    pairs = dict(zip(env[::2], env[1::2], strict=True))
    assert pairs["MALLOC_ARENA_MAX"] == "2"
    ports = {p for c in CMDS if c.cmd == "EXPOSE" for p in c.value}
    assert ports == {"8080", "8081"}  # metrics and health, as in values.yaml


def test_no_remote_adds_and_build_context_is_the_repo() -> None:
    assert not [c for c in CMDS if c.cmd == "ADD"]
    copied = {v for c in CMDS if c.cmd == "COPY" and not c.flags for v in c.value[:-1]}
    for path in copied:
        assert (ROOT / path).exists(), f"COPY {path}: not in the repository"


def test_make_image_builds_this_dockerfile_and_the_license_matches() -> None:
    makefile = (ROOT / "Makefile").read_text()
    assert "docker build -f operator/Dockerfile" in makefile
    assert "\nimage:" in makefile
    license_text = (ROOT / "LICENSE").read_text()
    assert "Apache License" in license_text and "Version 2.0" in license_text
    assert 'license = "Apache-2.0"' in (ROOT / "pyproject.toml").read_text()
