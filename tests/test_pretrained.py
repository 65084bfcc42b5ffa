"""Pretrained weights: env var, cache, a real HTTP download (from a local server), sha256
checks, `python -m velojax fetch-weights`, and a fast, helpful failure without network."""

import hashlib
import http.server
import os
import socket
import subprocess
import sys
import threading
import time

import jax
import numpy as np
import pytest

from tests.conftest import REPO
from tests.helpers import lively_meta_params
from velojax import optimizer, pretrained
from velojax.pretrained import PretrainedWeightsUnavailable, WeightsChecksumError


@pytest.fixture(scope="module")
def weights_file(tmp_path_factory):
    return optimizer.save_weights(tmp_path_factory.mktemp("w") / "params", lively_meta_params())


@pytest.fixture
def server(weights_file):
    """A local HTTP server: /params serves a valid checkpoint, /short its first half then
    closes the connection, /html an error page."""
    hits = []
    body = weights_file.read_bytes()

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            hits.append(self.path)
            data = body if self.path in ("/params", "/short") else b"<html>not found</html>"
            self.send_response(200)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data[: len(data) // 2] if self.path == "/short" else data)
            self.close_connection = True

        def log_message(self, *args):
            pass

    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}", hits
    httpd.shutdown()


def test_offline_without_a_copy_fails_fast_and_says_what_to_do():
    start = time.monotonic()
    with pytest.raises(PretrainedWeightsUnavailable) as err:
        optimizer.velo(100)  # conftest sets VELOJAX_OFFLINE
    assert time.monotonic() - start < 5
    message = str(err.value)
    assert pretrained.VELO_URL in message and "VELOJAX_WEIGHTS" in message
    assert str(pretrained.cached_weights_path()) in message


def test_unreachable_server_fails_within_seconds(monkeypatch):
    monkeypatch.delenv("VELOJAX_OFFLINE")
    start = time.monotonic()
    with pytest.raises(PretrainedWeightsUnavailable, match="downloading http://127.0.0.1:9/params failed"):
        pretrained.pretrained_weights_path(url="http://127.0.0.1:9/params", timeout=3)
    assert time.monotonic() - start < 5
    assert not pretrained.cached_weights_path().exists()


def test_downloads_once_into_the_cache(monkeypatch, server, weights_file):
    monkeypatch.delenv("VELOJAX_OFFLINE")
    base, hits = server
    path = pretrained.pretrained_weights_path(url=f"{base}/params")
    assert path == pretrained.cached_weights_path() and path.read_bytes() == weights_file.read_bytes()
    assert pretrained.pretrained_weights_path(url=f"{base}/params") == path
    assert hits == ["/params"]  # the second call used the cache
    assert sorted(p.name for p in path.parent.iterdir()) == ["params", "params.sha256"]  # no partial download left
    tx = optimizer.velo(10)  # weights=None now finds the cached file
    assert tx.init({"w": np.ones((2, 2), np.float32)}).lstm.hidden.shape == (1, 32)


def test_a_bad_download_is_not_cached(monkeypatch, server):
    monkeypatch.delenv("VELOJAX_OFFLINE")
    base, _ = server
    with pytest.raises(PretrainedWeightsUnavailable, match="CheckpointError"):
        pretrained.pretrained_weights_path(url=f"{base}/html")
    assert not pretrained.cached_weights_path().parent.exists()  # no file, no temporary, no new directory


def test_a_truncated_download_is_not_cached(monkeypatch, server):
    monkeypatch.delenv("VELOJAX_OFFLINE")
    base, _ = server
    with pytest.raises(PretrainedWeightsUnavailable, match=f"downloading {base}/short failed"):
        pretrained.pretrained_weights_path(url=f"{base}/short", timeout=3)
    assert not pretrained.cached_weights_path().parent.exists()


def test_env_var_names_the_file(monkeypatch, weights_file):
    monkeypatch.setenv("VELOJAX_WEIGHTS", str(weights_file))
    assert pretrained.pretrained_weights_path() == weights_file
    meta = pretrained.load_pretrained()
    assert jax.tree.leaves(meta)[0].dtype == np.float32
    monkeypatch.setenv("VELOJAX_WEIGHTS", str(weights_file.parent / "missing"))
    with pytest.raises(PretrainedWeightsUnavailable, match="does not exist"):
        pretrained.pretrained_weights_path()


def _sha256(path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_download_records_its_digest_and_the_cache_is_checked_against_it(monkeypatch, server, weights_file):
    monkeypatch.delenv("VELOJAX_OFFLINE")
    base, _ = server
    path = pretrained.pretrained_weights_path(url=f"{base}/params")
    record = path.with_name("params.sha256")
    assert record.read_text() == f"{_sha256(weights_file)}  params\n"
    data = path.read_bytes()
    path.write_bytes(data[:-1] + bytes([data[-1] ^ 1]))  # one flipped bit: still loads, wrong digest
    with pytest.raises(WeightsChecksumError, match=r"recorded at its download.*delete it and download it again"):
        pretrained.pretrained_weights_path(url=f"{base}/params")
    with pytest.raises(WeightsChecksumError):
        optimizer.velo(10)  # the optimizer's lookup is checked too


def test_a_download_with_another_digest_is_refused(monkeypatch, server, weights_file):
    monkeypatch.delenv("VELOJAX_OFFLINE")
    base, _ = server
    refused = f"its sha256 is {_sha256(weights_file)}, expected 0{{64}} \\(the digest given\\); nothing was saved"
    with pytest.raises(WeightsChecksumError, match=refused):
        pretrained.pretrained_weights_path(url=f"{base}/params", sha256="0" * 64)
    assert not pretrained.cached_weights_path().parent.exists()  # nothing kept, no temporary left
    monkeypatch.setattr(pretrained, "VELO_SHA256", "1" * 64)  # the package's digest applies when no other is given
    with pytest.raises(WeightsChecksumError, match=r"expected 1{64} \(VELO_SHA256\)"):
        pretrained.pretrained_weights_path(url=f"{base}/params")
    path = pretrained.pretrained_weights_path(url=f"{base}/params", sha256=_sha256(weights_file).upper())
    assert path.read_bytes() == weights_file.read_bytes()


def test_env_digest_checks_a_local_file(monkeypatch, weights_file):
    monkeypatch.setenv("VELOJAX_WEIGHTS", str(weights_file))
    monkeypatch.setenv("VELOJAX_WEIGHTS_SHA256", _sha256(weights_file))
    assert pretrained.pretrained_weights_path() == weights_file
    monkeypatch.setenv("VELOJAX_WEIGHTS_SHA256", "f" * 64)
    with pytest.raises(WeightsChecksumError, match=r"\$VELOJAX_WEIGHTS_SHA256"):
        pretrained.pretrained_weights_path()
    monkeypatch.setenv("VELOJAX_WEIGHTS_SHA256", "abc")
    with pytest.raises(ValueError, match="not a sha256 digest"):
        pretrained.pretrained_weights_path()


def test_fetch_reports_progress_and_writes_where_asked(monkeypatch, server, weights_file, tmp_path):
    monkeypatch.delenv("VELOJAX_OFFLINE")
    base, _ = server
    calls = []
    (tmp_path / "out").mkdir()
    path, digest = pretrained.fetch_weights(tmp_path / "out", url=f"{base}/params", progress=lambda *a: calls.append(a))
    size = weights_file.stat().st_size
    assert path == tmp_path / "out" / "params" and digest == _sha256(weights_file)
    assert calls[-1] == (size, size, True) and all(not c[2] for c in calls[:-1])
    assert [c[0] for c in calls] == sorted(c[0] for c in calls)
    assert not path.with_name("params.sha256").exists()  # a record is kept for the cache only
    assert not pretrained.cached_weights_path().exists()


def test_progress_printer_throttles_and_prints_the_end():
    import io

    stream = io.StringIO()
    printer = pretrained.ProgressPrinter(stream, interval=60.0)
    for done in range(0, 10_000_001, 1_000_000):
        printer(done, 10_000_000, False)
    printer(10_000_000, 10_000_000, True)
    lines = stream.getvalue().splitlines()
    assert len(lines) == 2  # the first update, then nothing for 60 s, then the final one
    assert lines[0].startswith("downloading: 0.0 MB / 10.0 MB (0%), ")
    assert lines[1].startswith("downloading: 10.0 MB / 10.0 MB (100%), ") and lines[1].endswith(" MB/s")


def _cli(*args, cache, timeout=60):
    env = {k: v for k, v in os.environ.items() if k != "VELOJAX_OFFLINE"} | {"VELOJAX_CACHE_DIR": str(cache)}
    return subprocess.run(
        [sys.executable, "-m", "velojax", "fetch-weights", *args],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout,
    )  # fmt: skip


def test_cli_fetches_verifies_and_prints_the_digest(server, weights_file, tmp_path):
    base, hits = server
    dest = tmp_path / "weights" / "params"
    done = _cli("--to", str(dest), "--url", f"{base}/params", cache=tmp_path / "cache")
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == [_sha256(dest), str(dest)] and dest.read_bytes() == weights_file.read_bytes()
    assert _sha256(dest) == hashlib.sha256(weights_file.read_bytes()).hexdigest()
    size = weights_file.stat().st_size / 1e6
    assert f"downloading: {size:.1f} MB / {size:.1f} MB (100%), " in done.stderr and "MB/s" in done.stderr
    assert f"VELOJAX_WEIGHTS_SHA256={_sha256(dest)}" in done.stderr  # how to pin it, as no digest was known
    assert hits == ["/params"] and not (tmp_path / "cache").exists()
    assert optimizer.num_meta_params(optimizer.load_weights(dest)) == optimizer.num_meta_params(lively_meta_params())


def test_cli_refuses_a_wrong_digest(server, tmp_path):
    base, _ = server
    dest = tmp_path / "params"
    done = _cli("--to", str(dest), "--url", f"{base}/params", "--sha256", "ab" * 32, cache=tmp_path / "cache")
    assert done.returncode == 2 and done.stdout == ""
    errors = [line for line in done.stderr.splitlines() if not line.startswith("downloading:")]
    assert len(errors) == 1 and errors[0].startswith("python -m velojax: error: refused the download of http://")
    assert f"expected {'ab' * 32} (the digest given)" in errors[0] and "nothing was saved" in errors[0]
    assert list(tmp_path.iterdir()) == []  # neither the file nor a temporary


def test_cli_fails_fast_without_a_server(tmp_path):
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    start = time.monotonic()
    dest = tmp_path / "new" / "dir" / "params"
    done = _cli("--to", str(dest), "--url", f"http://127.0.0.1:{port}/params", cache=tmp_path)
    assert done.returncode == 2 and time.monotonic() - start < 15  # most of it is importing jax
    assert len(done.stderr.splitlines()) == 1 and "Connection refused" in done.stderr
    assert "python -m velojax fetch-weights --to params" in done.stderr and "VELOJAX_WEIGHTS=" in done.stderr
    assert list(tmp_path.iterdir()) == []  # not even the directories made for the file
