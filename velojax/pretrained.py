"""The official pretrained VeLO weights: found locally, or downloaded once and cached.

Lookup order for `pretrained_weights_path()`:
  1. `$VELOJAX_WEIGHTS`, a path to the `params` file (or its directory);
  2. the cache, `$VELOJAX_CACHE_DIR` or `~/.cache/velojax` (`$XDG_CACHE_HOME` honoured),
     at `<cache>/aug12_continue_on_bigger_2xbs_200kstep_bigproblem_v2_5620/params`;
  3. a download from the public HTTPS copy of the official bucket into the cache,
     unless `$VELOJAX_OFFLINE` is set. Without network this fails within seconds
     (a 10 s socket timeout, no retries) with an error that says how to provide the file.
"""

from __future__ import annotations

import os
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

from velojax.checkpoint import PARAMS_FILENAME, CheckpointError, load_weights
from velojax.files import cache_dir
from velojax.meta_params import MetaParams

VELO_CHECKPOINT = "aug12_continue_on_bigger_2xbs_200kstep_bigproblem_v2_5620"
BUCKET_URL = "https://storage.googleapis.com/gresearch/learned_optimization/pretrained_lopts"
VELO_URL = f"{BUCKET_URL}/{VELO_CHECKPOINT}/{PARAMS_FILENAME}"
WEIGHTS_ENV = "VELOJAX_WEIGHTS"
OFFLINE_ENV = "VELOJAX_OFFLINE"
_MAX_DOWNLOAD_SECONDS = 600.0


class PretrainedWeightsUnavailable(RuntimeError):
    """The pretrained weights are neither local nor downloadable; the message says what to do."""


def cached_weights_path() -> Path:
    """Where the downloaded VeLO `params` file lives (whether or not it exists yet)."""
    return cache_dir() / VELO_CHECKPOINT / PARAMS_FILENAME


def _how_to_provide(reason: str) -> str:
    return (
        f"The pretrained VeLO weights are not available: {reason}\n"
        f"Provide the file once, in any of these ways:\n"
        f"  - on a machine with network: curl -fLo params {VELO_URL}\n"
        f"    then set {WEIGHTS_ENV}=/path/to/params, or copy it to {cached_weights_path()};\n"
        f"  - pass it directly: velojax.optimizer.velo(num_steps, weights='/path/to/params');\n"
        f"  - or use meta-parameters of your own (velojax.optimizer.load_weights / init_meta_params)."
    )


def pretrained_weights_path(*, download: bool = True, url: str = VELO_URL, timeout: float = 10.0) -> Path:
    """Path of a local copy of the pretrained VeLO `params` file (see the module doc).

    Raises:
      PretrainedWeightsUnavailable: not local, and downloading is off or failed.
    """
    if os.environ.get(WEIGHTS_ENV):
        path = Path(os.environ[WEIGHTS_ENV]).expanduser()
        if path.is_dir():
            path = path / PARAMS_FILENAME
        if not path.is_file():
            raise PretrainedWeightsUnavailable(_how_to_provide(f"${WEIGHTS_ENV} names {path}, which does not exist."))
        return path
    path = cached_weights_path()
    if path.is_file():
        return path
    if not download or os.environ.get(OFFLINE_ENV):
        raise PretrainedWeightsUnavailable(_how_to_provide(f"no cached copy at {path} and downloading is off."))
    _download(url, path, timeout)
    return path


def _download(url: str, dest: Path, timeout: float) -> None:
    """Fetch `url` to `dest` atomically; the file must load as VeLO weights before it is kept."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=dest.parent, prefix=".params.", suffix=".download")
    deadline = time.monotonic() + _MAX_DOWNLOAD_SECONDS
    try:
        with os.fdopen(fd, "wb") as out, urllib.request.urlopen(url, timeout=timeout) as response:
            while chunk := response.read(1 << 20):
                out.write(chunk)
                if time.monotonic() > deadline:
                    raise TimeoutError(f"the download took longer than {_MAX_DOWNLOAD_SECONDS:.0f} s")
        load_weights(tmp)  # refuse to cache an error page or a truncated file
        os.replace(tmp, dest)
    except (urllib.error.URLError, TimeoutError, ConnectionError, OSError, CheckpointError) as e:
        raise PretrainedWeightsUnavailable(
            _how_to_provide(f"downloading {url} failed ({type(e).__name__}: {e}).")
        ) from None
    finally:
        Path(tmp).unlink(missing_ok=True)


def load_pretrained(**kwargs) -> MetaParams:
    """The official pretrained VeLO meta-parameters (`pretrained_weights_path` + `load_weights`)."""
    return load_weights(pretrained_weights_path(**kwargs))
