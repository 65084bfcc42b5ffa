"""The official pretrained VeLO weights: found locally, or downloaded once and cached.

Lookup order for `pretrained_weights_path()`:
  1. `$VELOJAX_WEIGHTS`, a path to the `params` file (or its directory);
  2. the cache, `$VELOJAX_CACHE_DIR` or `~/.cache/velojax` (`$XDG_CACHE_HOME` honoured),
     at `<cache>/aug12_continue_on_bigger_2xbs_200kstep_bigproblem_v2_5620/params`;
  3. a download from the public HTTPS copy of the official bucket into the cache,
     unless `$VELOJAX_OFFLINE` is set. Without network this fails within seconds
     (a 10 s socket timeout, no retries) with an error that says how to provide the file.
     `python -m velojax fetch-weights` does the same download on demand, with progress.

Checksums. The expected sha256 is, first found: the `sha256=` argument,
`$VELOJAX_WEIGHTS_SHA256`, `VELO_SHA256`. When one is known, a download that differs is
refused (nothing is kept) and a local file that differs is an error. A download's digest is
also recorded beside the cached file (`params.sha256`), and the cached file is checked
against that record on every later use, so a cache damaged after the download is caught
even when no digest is known. A downloaded file must also load as VeLO weights to be kept.
"""

from __future__ import annotations

import hashlib
import http.client
import os
import re
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import TextIO

from velojax.checkpoint import PARAMS_FILENAME, CheckpointError, load_weights
from velojax.files import cache_dir, write_atomic
from velojax.meta_params import MetaParams
from velojax.shipped import sha256_of

VELO_CHECKPOINT = "aug12_continue_on_bigger_2xbs_200kstep_bigproblem_v2_5620"
BUCKET_URL = "https://storage.googleapis.com/gresearch/learned_optimization/pretrained_lopts"
VELO_URL = f"{BUCKET_URL}/{VELO_CHECKPOINT}/{PARAMS_FILENAME}"
#: sha256 of the official `params` file. Unknown: the bucket was not reachable where velojax
#: was written, and no digest is published. Whoever downloads it (`python -m velojax
#: fetch-weights` prints the digest) can record it here; until then downloads are checked
#: only by loading, and the cache against the digest recorded at its download.
VELO_SHA256: str | None = None
WEIGHTS_ENV = "VELOJAX_WEIGHTS"
SHA256_ENV = "VELOJAX_WEIGHTS_SHA256"
OFFLINE_ENV = "VELOJAX_OFFLINE"
DIGEST_SUFFIX = ".sha256"  # the recorded digest of a cached download: <cache>/.../params.sha256
_MAX_DOWNLOAD_SECONDS = 600.0
_CHUNK = 1 << 18

#: progress(bytes done, total bytes or None, finished)
Progress = Callable[[int, int | None, bool], None]


class PretrainedWeightsUnavailable(RuntimeError):
    """The pretrained weights are neither local nor downloadable; the message says what to do."""


class WeightsChecksumError(PretrainedWeightsUnavailable):
    """A weights file or download does not have the expected sha256."""


def cached_weights_path() -> Path:
    """Where the downloaded VeLO `params` file lives (whether or not it exists yet)."""
    return cache_dir() / VELO_CHECKPOINT / PARAMS_FILENAME


def _record_path(path: Path) -> Path:
    return path.with_name(path.name + DIGEST_SUFFIX)


def expected_sha256(sha256: str | None = None) -> tuple[str, str] | None:
    """(digest, where it came from) of the first of `sha256`, `$VELOJAX_WEIGHTS_SHA256` and
    `VELO_SHA256` that is set, or None. Raises ValueError if it is not 64 hex digits."""
    env = os.environ.get(SHA256_ENV)
    for value, source in ((sha256, "the digest given"), (env, f"${SHA256_ENV}"), (VELO_SHA256, "VELO_SHA256")):
        if value:
            digest = value.strip().lower()
            if not re.fullmatch(r"[0-9a-f]{64}", digest):
                raise ValueError(f"{source} is not a sha256 digest (64 hex digits): {value!r}")
            return digest, source
    return None


def _how_to_provide(reason: str) -> str:
    # One line (the command lines print errors on one line); the ways, most common first.
    return (
        f"The pretrained VeLO weights are not available: {reason} Provide the file once: on a machine with "
        f"network run `python -m velojax fetch-weights --to params` (or `curl -fLo params {VELO_URL}`), then set "
        f"{WEIGHTS_ENV}=/path/to/params or copy it to {cached_weights_path()}; or pass "
        f"velojax.optimizer.velo(num_steps, weights='/path/to/params'), or use other weights "
        f"(a shipped name such as weights='small_v1', load_weights, init_meta_params)."
    )


def _check_local(path: Path, expected: tuple[str, str] | None) -> Path:
    """`path` if its sha256 is the expected one or, with none known, the one recorded at download."""
    record = _record_path(path)
    if expected is None and record.is_file():
        expected = (record.read_text().split() or [""])[0], f"recorded at its download in {record}"
    if expected is not None:
        got = sha256_of(path)
        if got != expected[0]:
            raise WeightsChecksumError(
                f"{path} has sha256 {got}, expected {expected[0]} ({expected[1]}): the file is damaged or not "
                f"the one wanted; delete it and download it again (python -m velojax fetch-weights [--to PATH])."
            )
    return path


def pretrained_weights_path(
    *, download: bool = True, url: str = VELO_URL, timeout: float = 10.0, sha256: str | None = None
) -> Path:
    """Path of a local copy of the pretrained VeLO `params` file (see the module doc),
    checked against the expected or recorded sha256.

    Raises:
      PretrainedWeightsUnavailable: not local, and downloading is off or failed.
      WeightsChecksumError: the file or the download has another sha256.
    """
    expected = expected_sha256(sha256)
    if os.environ.get(WEIGHTS_ENV):
        path = Path(os.environ[WEIGHTS_ENV]).expanduser()
        if path.is_dir():
            path = path / PARAMS_FILENAME
        if not path.is_file():
            raise PretrainedWeightsUnavailable(_how_to_provide(f"${WEIGHTS_ENV} names {path}, which does not exist."))
        return _check_local(path, expected)
    path = cached_weights_path()
    if path.is_file():
        return _check_local(path, expected)
    if not download or os.environ.get(OFFLINE_ENV):
        raise PretrainedWeightsUnavailable(_how_to_provide(f"no cached copy at {path} and downloading is off."))
    return fetch_weights(url=url, sha256=sha256, timeout=timeout)[0]


def fetch_weights(
    dest: str | os.PathLike | None = None,
    *,
    url: str = VELO_URL,
    sha256: str | None = None,
    timeout: float = 10.0,
    progress: Progress | None = None,
) -> tuple[Path, str]:
    """Download the weights to `dest` (a file, or a directory to hold `params`; default: the
    cache, where the digest is recorded too) and return (path, sha256). The file is replaced
    atomically, and only by a download that has the expected sha256 (if one is known) and
    loads as VeLO weights. No retries: `timeout` bounds each socket operation.

    Raises:
      PretrainedWeightsUnavailable: `$VELOJAX_OFFLINE` is set, or the download failed.
      WeightsChecksumError: the download has another sha256 (nothing is kept).
    """
    expected = expected_sha256(sha256)
    path = cached_weights_path() if dest is None else Path(dest).expanduser()
    if path.is_dir():
        path = path / PARAMS_FILENAME
    if os.environ.get(OFFLINE_ENV):
        raise PretrainedWeightsUnavailable(
            _how_to_provide(f"no copy at {path} and ${OFFLINE_ENV} is set (unset it to download).")
        )
    created = [d for d in (path.parent, *path.parent.parents) if not d.exists()]  # removed again on failure
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".download")
    try:
        with os.fdopen(fd, "wb") as out:
            digest = _stream(url, out, timeout, progress)
        if expected is not None and digest != expected[0]:
            raise WeightsChecksumError(
                f"refused the download of {url}: its sha256 is {digest}, expected {expected[0]} ({expected[1]}); "
                f"nothing was saved."
            )
        load_weights(tmp)  # refuse to keep an error page or a truncated file
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except (urllib.error.URLError, http.client.HTTPException, OSError, CheckpointError) as e:
        raise PretrainedWeightsUnavailable(
            _how_to_provide(f"downloading {url} failed ({type(e).__name__}: {e}).")
        ) from None
    finally:
        Path(tmp).unlink(missing_ok=True)
        if not path.is_file():
            for d in created:
                try:
                    d.rmdir()
                except OSError:  # something else was put there meanwhile: leave it
                    break
    if dest is None:
        write_atomic(_record_path(path), f"{digest}  {path.name}\n")
    return path, digest


def _stream(url: str, out, timeout: float, progress: Progress | None) -> str:
    """Copy `url` into the open file `out` (fsynced); returns the sha256 of the bytes."""
    digest, done = hashlib.sha256(), 0
    deadline = time.monotonic() + _MAX_DOWNLOAD_SECONDS
    with urllib.request.urlopen(url, timeout=timeout) as response:
        length = response.headers.get("Content-Length")
        total = int(length) if length and length.isdigit() else None
        while chunk := response.read(_CHUNK):
            out.write(chunk)
            digest.update(chunk)
            done += len(chunk)
            if progress:
                progress(done, total, False)
            if time.monotonic() > deadline:
                raise TimeoutError(f"the download took longer than {_MAX_DOWNLOAD_SECONDS:.0f} s")
    if total is not None and done != total:
        raise ConnectionError(f"the connection closed after {done} of {total} bytes")
    out.flush()
    os.fsync(out.fileno())
    if progress:
        progress(done, total, True)
    return digest.hexdigest()


class ProgressPrinter:
    """Download progress as plain text on `stream` (bytes done / total, MB/s), at most one
    update per `interval` seconds plus the final one. On a terminal each update overwrites the
    last; elsewhere (a log) each is its own line."""

    def __init__(self, stream: TextIO | None = None, interval: float = 0.25, label: str = "downloading"):
        self.stream = stream if stream is not None else sys.stderr
        self.interval, self.label = interval, label
        self.start = time.monotonic()
        self.last = -float("inf")
        self.tty = self.stream.isatty()
        self.width = 0

    def __call__(self, done: int, total: int | None, finished: bool) -> None:
        now = time.monotonic()
        if not finished and now - self.last < self.interval:
            return
        self.last = now
        size = f"{done / 1e6:.1f} MB"
        if total:
            size += f" / {total / 1e6:.1f} MB ({100 * done / total:.0f}%)"
        line = f"{self.label}: {size}, {done / 1e6 / max(now - self.start, 1e-6):.1f} MB/s"
        if self.tty:  # padded: a shorter line must cover the previous one
            self.stream.write("\r" + line.ljust(self.width) + ("\n" if finished else ""))
            self.width = len(line)
        else:
            self.stream.write(line + "\n")
        self.stream.flush()


def load_pretrained(**kwargs) -> MetaParams:
    """The official pretrained VeLO meta-parameters (`pretrained_weights_path` + `load_weights`)."""
    return load_weights(pretrained_weights_path(**kwargs))
