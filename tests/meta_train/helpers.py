"""Small meta-training problems for tests."""

import dataclasses
import math
import os
import socket
import struct
import subprocess
import sys
from pathlib import Path

import jax
import jax.numpy as jnp

from meta_train import configs
from meta_train.estimators import FullES
from meta_train.learned_optimizer import VeLONetwork
from tasks.families.quadratic import Quadratic
from tests.conftest import REPO
from tests.xla_flags import xla_flags
from velojax.config import VeLOConfig

QUADRATIC = Quadratic(dim=6, batch_size=2, noise=0.1)
SMALL_NET = VeLONetwork(VeLOConfig.small(8, 2))


def small_es(**kw) -> FullES:
    defaults = dict(num_pairs=4, min_length=10, max_length=10, chunk=5, recompute_batches=2)
    return FullES(SMALL_NET, **{**defaults, **kw})


@dataclasses.dataclass(frozen=True)
class SometimesNaN(Quadratic):
    """A quadratic whose tasks with target[0] > 0 have a NaN loss, which (unlike the
    families' normalizers) its normalizer passes on."""

    def loss(self, params, state, key, batch, cfg):
        loss, state = super().loss(params, state, key, batch, cfg)
        return jnp.where(cfg["target"][0] > 0, jnp.nan, loss), state

    def normalizer(self, loss, cfg=None):
        return jnp.log1p(loss)


@dataclasses.dataclass(frozen=True)
class KeyedQuadratic(Quadratic):
    """A quadratic whose loss also depends on the step's key (like dropout does)."""

    def loss(self, params, state, key, batch, cfg):
        loss, state = super().loss(params, state, key, batch, cfg)
        return loss * (1.0 + 0.5 * jax.random.uniform(key)), state


@dataclasses.dataclass(frozen=True)
class WithoutAntithetic:
    """VeLONetwork without `antithetic_pairs`: FullES then vmaps over materialised θ ± ε."""

    net: VeLONetwork

    def init(self, *args):
        return self.net.init(*args)

    def update(self, *args):
        return self.net.update(*args)


@dataclasses.dataclass(frozen=True)
class SgdLopt:
    """A two-parameter "learned optimizer" (same interface as VeLONetwork): SGD with
    momentum, θ = {log learning rate, momentum logit}. Compiles in a blink, and the
    inner training is differentiable in θ, so exact meta-gradients can be computed."""

    lr: float = 0.05

    def init_theta(self, key=None):
        return {"log_lr": jnp.float32(math.log(self.lr)), "beta_logit": jnp.float32(0.0)}

    def init(self, theta, params, num_steps):
        return {"m": jax.tree.map(jnp.zeros_like, params), "num_steps": jnp.asarray(num_steps, jnp.int32)}

    def update(self, theta, state, grads, params, loss):
        lr, beta = jnp.exp(theta["log_lr"]), jax.nn.sigmoid(theta["beta_logit"])
        m = jax.tree.map(lambda m, g: beta * m + g, state["m"], grads)
        return jax.tree.map(lambda p, m: p - lr * m, params, m), {**state, "m": m}


SGD = SgdLopt()


# A seconds-long tiny_cpu: the CLI runs it with these overrides (plus eval_pairs=0).
TINY_OVERRIDES = ["steps=4", "min_length=10", "max_length=20", "estimator.num_pairs=2", "estimator.chunk=5",
                  "estimator.recompute_batches=2", "eval_recompute_batches=2",
                  "lstm_hidden_size=8", "param_inits=2", "checkpoint_every=1", "eval_pairs=2", "eval_length=10",
                  "batch_size=8", "meta_lr=1e-2"]  # fmt: skip
TINY_RUN = configs.get("tiny_cpu").with_overrides(TINY_OVERRIDES)
# The same with PES: 10-step truncations of 10-20-step episodes, the pool redrawn after 3
# steps (which re-initialises the PES state).
TINY_PES_OVERRIDES = [o for o in TINY_OVERRIDES if o != "estimator.recompute_batches=2"] + [
    "estimator.trunc_length=10", "eval_pairs=0", "resample_every=3"]  # fmt: skip
TINY_PES_RUN = configs.get("tiny_cpu_pes").with_overrides(TINY_PES_OVERRIDES)


def cli(config: str, workdir: Path, overrides: list[str]) -> list[str]:
    """The meta_train CLI command for `config` with `overrides`, writing to `workdir`."""
    return [
        sys.executable,
        "-m",
        "meta_train",
        "--config",
        config,
        "--workdir",
        str(workdir),
        "--no-progress",
    ] + overrides


def subprocess_env(devices: int | None = None) -> dict:
    """The environment of a CLI process: the tests' compilation cache (small programs
    included) and, with `devices`, that many forced CPU devices and the tests' compile
    flags (as this process's, so that results can be compared bit for bit)."""
    env = dict(os.environ, JAX_PLATFORMS="cpu", JAX_COMPILATION_CACHE_DIR=str(REPO / ".jax_cache"))
    env.update(JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0")
    if devices is not None:
        env["XLA_FLAGS"] = xla_flags(devices)
    return env


def run_cluster(command: list[str], num_processes: int = 2) -> list[str]:
    """Runs `command` as `num_processes` processes (1 CPU device each) forming one cluster
    on 127.0.0.1; returns their outputs after checking that all succeeded."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = subprocess_env(devices=1)
    cluster = ["--coordinator", f"127.0.0.1:{port}", "--num-processes", str(num_processes)]
    procs = [
        subprocess.Popen(
            command + cluster + ["--process-id", str(i)],
            env=env,
            cwd=REPO,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )  # fmt: skip
        for i in range(num_processes)
    ]
    outs = [p.communicate(timeout=600)[0] for p in procs]
    assert all(p.returncode == 0 for p in procs), "\n".join(out[-3000:] for out in outs)
    return outs


def read_scalars(logdir: Path) -> tuple[dict[str, dict[int, float]], list[int]]:
    """What TensorBoard shows of the event files in `logdir`: ({tag: {step: value}}, the
    purge steps). Files are read in name order; a SessionLog START at step s (a purge)
    drops the points logged before it at steps >= s."""
    from tensorboardX.proto import event_pb2

    scalars, purges = {}, []
    for path in sorted(Path(logdir).glob("events.out.tfevents.*")):
        data, pos = path.read_bytes(), 0
        while pos < len(data):  # TFRecord framing: u64 length, u32 crc, payload, u32 crc
            (size,) = struct.unpack("<Q", data[pos : pos + 8])
            event = event_pb2.Event.FromString(data[pos + 12 : pos + 12 + size])
            pos += 12 + size + 4
            if event.HasField("session_log") and event.session_log.status == event_pb2.SessionLog.START:
                purges.append(event.step)
                for series in scalars.values():
                    for step in [s for s in series if s >= event.step]:
                        del series[step]
            for value in event.summary.value:
                scalars.setdefault(value.tag, {})[event.step] = value.simple_value
    return scalars, purges
