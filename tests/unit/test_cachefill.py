"""The cache fill against a hub on 127.0.0.1: the marker comes last, a retry resumes,
failures say what to do, and the token never follows a redirect."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from distillery import cachefill
from distillery.cachefill import FillError, RemoteFile, fill, select_files
from distillery.reconcile.cache import parse_progress
from distillery.render.cache import MARKER, PROGRESS_PREFIX
from tests.support.hub import FakeHub, serve_hub

REPO = "org/tiny"
FILES = {
    "config.json": b'{"model_type": "qwen2"}',
    "model-00001-of-00002.safetensors": bytes(range(256)) * 40,
    "model-00002-of-00002.safetensors": b"\x01" * 5000,
    "pytorch_model.bin": b"\x02" * 7000,
    "original/consolidated.pth": b"\x03" * 3000,
}
WANTED = {k: v for k, v in FILES.items() if not k.endswith((".bin", ".pth"))}


def _hub(**kw: object) -> FakeHub:
    return FakeHub(repos={(REPO, "main"): dict(FILES)}, **kw)  # type: ignore[arg-type]


def test_fill_downloads_the_revision_and_writes_the_marker_last(tmp_path: Path) -> None:
    seen: list[str] = []
    with serve_hub(_hub()) as hub:
        summary = fill(
            f"hf://{REPO}", "main", tmp_path, env={"HF_ENDPOINT": hub.endpoint}, log=seen.append
        )
    for path, content in WANTED.items():
        assert (tmp_path / path).read_bytes() == content
    assert not (tmp_path / "pytorch_model.bin").exists()  # safetensors make it redundant
    assert not (tmp_path / "original").exists()
    marker = json.loads((tmp_path / MARKER).read_text())
    assert marker["bytes"] == sum(len(v) for v in WANTED.values()) == summary.bytes
    assert marker["source"] == f"hf://{REPO}" and marker["revision"] == "main"
    assert seen[-1].startswith("complete:")


def test_a_cut_download_leaves_no_marker_and_the_retry_resumes(tmp_path: Path) -> None:
    env: dict[str, str] = {}
    with serve_hub(_hub(cut_after_bytes=1000, cut_after_attempts=1)) as hub:
        env["HF_ENDPOINT"] = hub.endpoint
        with pytest.raises(FillError, match="cut off"):
            fill(f"hf://{REPO}", "main", tmp_path, env=env, log=lambda _: None)
        assert not (tmp_path / MARKER).exists()
        fill(f"hf://{REPO}", "main", tmp_path, env=env, log=lambda _: None)
        ranges = [r for _, r, _ in hub.downloads() if r]
    assert ranges == ["bytes=1000-"], "the retry continues the cut file"
    assert (tmp_path / "model-00001-of-00002.safetensors").read_bytes() == WANTED[
        "model-00001-of-00002.safetensors"
    ]
    assert (tmp_path / MARKER).exists()


def test_a_gated_model_without_a_token_says_to_set_the_secret(tmp_path: Path) -> None:
    with (
        serve_hub(_hub(token="hf_secret_value")) as hub,
        pytest.raises(FillError, match="credentialsSecretRef") as err,
    ):
        fill(f"hf://{REPO}", "main", tmp_path, env={"HF_ENDPOINT": hub.endpoint})
    assert "401" in str(err.value)
    assert not (tmp_path / MARKER).exists()


def test_the_token_reaches_the_hub_and_never_the_redirect(tmp_path: Path) -> None:
    env = {"HF_TOKEN": "hf_secret_value"}
    with serve_hub(_hub(token="hf_secret_value")) as hub:
        env["HF_ENDPOINT"] = hub.endpoint
        fill(f"hf://{REPO}", "main", tmp_path, env=env, log=lambda _: None)
        blob_auth = [a for _, _, a in hub.downloads()]
        hub_auth = [a for p, _, a in hub.requests if not p.startswith("/blobs/")]
    assert blob_auth and all(a is None for a in blob_auth)
    assert set(hub_auth) == {"Bearer hf_secret_value"}


def test_a_wrong_revision_points_at_the_spec(tmp_path: Path) -> None:
    with serve_hub(_hub()) as hub, pytest.raises(FillError, match=r"spec\.model\.revision"):
        fill(f"hf://{REPO}", "v9", tmp_path, env={"HF_ENDPOINT": hub.endpoint})


def test_a_claim_too_small_is_refused_before_downloading(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(cachefill, "_free_bytes", lambda _: 100)
    with serve_hub(_hub()) as hub:
        with pytest.raises(FillError, match="sizeGiB"):
            fill(f"hf://{REPO}", "main", tmp_path, env={"HF_ENDPOINT": hub.endpoint})
        assert not any("/resolve/" in p for p, _, _ in hub.requests)


def test_a_complete_cache_is_not_downloaded_again(tmp_path: Path) -> None:
    with serve_hub(_hub()) as hub:
        env = {"HF_ENDPOINT": hub.endpoint}
        fill(f"hf://{REPO}", "main", tmp_path, env=env, log=lambda _: None)
        before = len(hub.requests)
        again = fill(f"hf://{REPO}", "main", tmp_path, env=env, log=lambda _: None)
        assert len(hub.requests) == before
    assert again.bytes == sum(len(v) for v in WANTED.values())


def test_a_single_gguf_file_is_all_that_is_fetched(tmp_path: Path) -> None:
    hub_files = {"q4.gguf": b"G" * 999, "q8.gguf": b"H" * 1999}
    with serve_hub(FakeHub(repos={(REPO, "main"): hub_files})) as hub:
        fill(f"hf://{REPO}/q4.gguf", "main", tmp_path, env={"HF_ENDPOINT": hub.endpoint})
    assert (tmp_path / "q4.gguf").stat().st_size == 999
    assert not (tmp_path / "q8.gguf").exists()


def test_a_directory_source_is_copied_with_the_marker(tmp_path: Path) -> None:
    src, dest = tmp_path / "src", tmp_path / "dest"
    (src / "sub").mkdir(parents=True)
    (src / "a.safetensors").write_bytes(b"a" * 10)
    (src / "sub" / "b.json").write_bytes(b"{}")
    summary = fill(f"file://{src}", None, dest, env={}, log=lambda _: None)
    assert (dest / "sub" / "b.json").read_bytes() == b"{}"
    assert summary.bytes == 12 and (dest / MARKER).exists()


def test_main_reports_the_outcome_on_the_termination_log(tmp_path: Path) -> None:
    log = tmp_path / "termination-log"
    code = cachefill.main("s3://bucket/x", None, str(tmp_path / "d"), str(log))
    assert code == 1
    assert "expected hf://" in json.loads(log.read_text())["error"]


def test_unsafe_paths_in_a_listing_are_refused() -> None:
    with pytest.raises(FillError, match="outside the cache"):
        cachefill._safe_relative("../etc/passwd")
    files = [RemoteFile("a.gguf", 1), RemoteFile("b.gguf", 2)]
    with pytest.raises(FillError, match="not in the repository"):
        select_files(files, "c.gguf")


def test_a_long_download_logs_its_progress(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(cachefill, "PROGRESS_SECONDS", 0.0)
    monkeypatch.setattr(cachefill, "CHUNK", 4096)
    seen: list[str] = []
    with serve_hub(_hub()) as hub:
        fill(f"hf://{REPO}", "main", tmp_path, env={"HF_ENDPOINT": hub.endpoint}, log=seen.append)
    big = "model-00001-of-00002.safetensors"
    progress = [line for line in seen if line.startswith(f"{big}: ") and " of " in line]
    assert progress and progress[-1].startswith(f"{big}: 10240 of 10240 bytes (100%)")


def test_a_second_fill_of_one_volume_waits_for_the_first(tmp_path: Path) -> None:
    import fcntl
    import threading

    seen: list[str] = []
    with serve_hub(_hub()) as hub, (tmp_path / cachefill.LOCK).open("a") as held:
        fcntl.flock(held, fcntl.LOCK_EX)  # another fill (a pod of a deleted Job) runs
        worker = threading.Thread(
            target=fill,
            args=(f"hf://{REPO}", "main", tmp_path),
            kwargs={"env": {"HF_ENDPOINT": hub.endpoint}, "log": seen.append},
        )
        worker.start()
        worker.join(timeout=1.5)
        assert worker.is_alive() and not any("/resolve/" in p for p, _, _ in hub.requests)
        assert seen == ["another fill holds this volume: waiting for it"]
        fcntl.flock(held, fcntl.LOCK_UN)
        worker.join(timeout=30)
    assert not worker.is_alive() and (tmp_path / MARKER).exists()


def test_a_filled_cache_as_a_source_copies_its_files_not_its_bookkeeping(tmp_path: Path) -> None:
    src, dest = tmp_path / "src", tmp_path / "dest"
    src.mkdir()
    (src / "w.safetensors").write_bytes(b"w" * 5)
    (src / MARKER).write_text("{}")
    (src / cachefill.LOCK).write_text("")
    (src / "x.safetensors.part").write_bytes(b"x")
    summary = fill(f"file://{src}", None, dest, env={}, log=lambda _: None)
    assert summary.files == 1 and summary.bytes == 5
    assert sorted(p.name for p in dest.iterdir()) == sorted(
        [MARKER, cachefill.LOCK, "w.safetensors"]
    )


def test_an_incomplete_cache_is_never_copied(tmp_path: Path) -> None:
    src, dest = tmp_path / "src", tmp_path / "dest"
    src.mkdir()
    (src / "w.safetensors").write_bytes(b"w" * 5)
    (src / cachefill.LOCK).write_text("")  # a fill ran here and wrote no marker
    with pytest.raises(FillError, match="not complete"):
        fill(f"file://{src}", None, dest, env={}, log=lambda _: None)
    assert not (dest / MARKER).exists()


def test_hold_keeps_a_complete_copy_running_until_sigterm(tmp_path: Path) -> None:
    """A node-local copy's DaemonSet pod: it copies, stays up (Ready by its marker) and
    exits cleanly when the kubelet stops it."""
    src, dest = tmp_path / "src", tmp_path / "dest"
    src.mkdir()
    (src / "w.safetensors").write_bytes(b"w" * 5)
    (src / MARKER).write_text("{}")
    proc = subprocess.Popen(
        [sys.executable, "-m", "distillery.cli", "cache-fill", f"--source=file://{src}",
         f"--dest={dest}", "--hold", f"--termination-log={tmp_path / 'log'}"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 60
        while not (dest / MARKER).exists() and time.monotonic() < deadline:
            assert proc.poll() is None, proc.communicate()[0]
            time.sleep(0.1)
        assert (dest / "w.safetensors").read_bytes() == b"w" * 5
        time.sleep(0.5)
        assert proc.poll() is None, "a held copy keeps running"
    finally:
        proc.send_signal(signal.SIGTERM)
        out = proc.communicate(timeout=30)[0]
    assert proc.returncode == 0, out
    assert "holding the complete copy" in out


def test_the_whole_fill_reports_its_bytes_in_a_line_the_operator_parses(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(cachefill, "PROGRESS_SECONDS", 0.0)
    monkeypatch.setattr(cachefill, "CHUNK", 4096)
    seen: list[str] = []
    with serve_hub(_hub()) as hub:
        summary = fill(
            f"hf://{REPO}", "main", tmp_path, env={"HF_ENDPOINT": hub.endpoint}, log=seen.append
        )
    lines = [line for line in seen if line.startswith(PROGRESS_PREFIX)]
    assert lines, seen
    reported = [parse_progress(line) or 0 for line in lines]
    assert reported == sorted(reported), "the bytes only grow"
    assert reported[-1] == summary.bytes
    assert parse_progress("\n".join(seen)) == summary.bytes, "the last line in a log counts"
    last = json.loads(lines[-1][len(PROGRESS_PREFIX) :])
    assert last["of"] == summary.bytes
