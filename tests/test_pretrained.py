"""Pretrained weights: env var, cache, a real HTTP download (from a local server), and a
fast, helpful failure without network."""

import http.server
import threading
import time

import jax
import numpy as np
import pytest

from tests.helpers import lively_meta_params
from velojax import optimizer, pretrained
from velojax.pretrained import PretrainedWeightsUnavailable


@pytest.fixture(scope="module")
def weights_file(tmp_path_factory):
    return optimizer.save_weights(tmp_path_factory.mktemp("w") / "params", lively_meta_params())


@pytest.fixture
def server(weights_file):
    """A local HTTP server: /params serves a valid checkpoint, /html an error page."""
    hits = []
    body = weights_file.read_bytes()

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            hits.append(self.path)
            data = body if self.path == "/params" else b"<html>not found</html>"
            self.send_response(200)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

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
    assert [p.name for p in path.parent.iterdir()] == ["params"]  # no partial download left
    tx = optimizer.velo(10)  # weights=None now finds the cached file
    assert tx.init({"w": np.ones((2, 2), np.float32)}).lstm.hidden.shape == (1, 32)


def test_a_bad_download_is_not_cached(monkeypatch, server):
    monkeypatch.delenv("VELOJAX_OFFLINE")
    base, _ = server
    with pytest.raises(PretrainedWeightsUnavailable, match="CheckpointError"):
        pretrained.pretrained_weights_path(url=f"{base}/html")
    assert not pretrained.cached_weights_path().exists()
    assert not list(pretrained.cached_weights_path().parent.iterdir())


def test_env_var_names_the_file(monkeypatch, weights_file):
    monkeypatch.setenv("VELOJAX_WEIGHTS", str(weights_file))
    assert pretrained.pretrained_weights_path() == weights_file
    meta = pretrained.load_pretrained()
    assert jax.tree.leaves(meta)[0].dtype == np.float32
    monkeypatch.setenv("VELOJAX_WEIGHTS", str(weights_file.parent / "missing"))
    with pytest.raises(PretrainedWeightsUnavailable, match="does not exist"):
        pretrained.pretrained_weights_path()
