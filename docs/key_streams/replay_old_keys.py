"""`python -m meta_train` with the key derivations of f388417 (before the named key streams)
patched in, and nothing else changed: a record of how the key-streams change was shown to
keep the algorithm (docs/meta_train.md, "Learning before and after the named key streams").

Run from the repository root, with the seed also in the environment (the old keys were
`PRNGKey(seed + k)`):

    SEED=0 python docs/key_streams/replay_old_keys.py --config tiny_cpu --workdir runs/replay \\
        --init-theta OLD_INITIAL_THETA seed=0 eval_length=175

It patches module attributes of the code it was written for (4b40c7d; later code may rename
them); it is not part of the package, and no test runs it.
"""

import os
import sys

import jax
import jax.numpy as jnp
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

sys.path.insert(0, os.getcwd())

from meta_train import __main__ as cli
from meta_train import data_feed, estimators, pes, train
from meta_train.sharding import AXIS, place
from tasks import key_streams, rollout

SEED = int(os.environ["SEED"])
new_stream = key_streams.stream

# FullES: an estimate's key split 6 ways; pairs' keys split from their part.
ESTIMATE_PARTS = ("length", "tasks", "perturbation", "data", "loss", "recompute")


def full_es_stream(key, name, *indices):
    assert not indices and name in ESTIMATE_PARTS, name
    return jax.random.split(key, 6)[ESTIMATE_PARTS.index(name)]


def full_es_pair_keys(key, name, num_pairs):
    return jax.random.split(full_es_stream(key, name), num_pairs)


def instantiate(family, key, cfg=None):
    """A task's key split into (config, init)."""
    k_cfg, k_init = jax.random.split(key)
    cfg = family.sample(k_cfg) if cfg is None else cfg
    return (cfg, *family.init(k_init, cfg))


def run_stream(key, name, *indices):
    """A run's keys from PRNGKey(seed + k) and fold_ins of the indices."""
    offset = {"estimate": 0, "pick": 1, "evaluation": 2, "estimator_init": 4}.get(name)
    if name == "pick" and len(indices) == 3:  # PES: (phase, epoch, estimate)
        offset = 3
    if offset is None:
        return new_stream(key, name, *indices)
    out = jax.random.PRNGKey(SEED + offset)
    for i in indices:
        out = jax.random.fold_in(out, i)
    return out


# PES: a step key split into (train, reset, episode length); a pair's init key into
# (task, length, offset); a truncation's key into (perturbation, data, steps).
PES_STEP_PARTS = ("loss", "reset", "episode_length")


def pes_stream(key, name, *indices):
    assert not indices and name in PES_STEP_PARTS, name
    return jax.random.split(key, 3)[PES_STEP_PARTS.index(name)]


def pes_init_pairs(es, family, theta, keys):
    def init_pair(key):
        k_task, k_len, k_off = jax.random.split(key, 3)
        length = pes.sample_length(k_len, es.min_length, es.max_length)
        if es.random_offset:
            length = length - jax.random.randint(k_off, (), 0, length, jnp.int32)
        task = pes._new_task(es, family, theta, None, k_task, length)
        runs = pes.InnerRuns(**task._asdict(), step=jnp.zeros((), jnp.int32), length=length, done=jnp.zeros((), bool))
        return pes.PESState(runs, accumulator=jax.tree.map(jnp.zeros_like, theta))

    return jax.vmap(init_pair)(keys)


def pes_unroll(self, theta, state, key, family, mesh):
    programs = pes._programs(self, family, mesh)
    k_pert, k_data, k_step = jax.random.split(key, 3)
    pert_keys = place(jax.random.split(k_pert, self.num_pairs), NamedSharding(mesh, P(AXIS)))
    rngs = data_feed.pair_rngs(k_data, self.num_pairs)
    inner, traces = state.runs, []
    for c in range(self.trunc_length // self.chunk):
        batches = data_feed.stacked(family, rngs, "train", self.chunk)
        keys = data_feed.pair_keys(jax.random.fold_in(k_step, c), self.num_pairs, self.chunk)
        inner, trace = programs.chunk(theta, pert_keys, inner, batches, keys)
        traces.append(trace)
    return inner, tuple(traces), pert_keys


estimators.stream = full_es_stream
estimators.per_pair_keys = full_es_pair_keys
rollout.instantiate = instantiate
train.stream = run_stream
pes.stream = pes_stream
pes.init_pairs = pes_init_pairs
pes.TruncatedPES._unroll = pes_unroll
data_feed.per_pair_keys = lambda key, name, num_pairs: jax.random.split(key, num_pairs)  # PES's init

if __name__ == "__main__":
    sys.exit(cli.main(sys.argv[1:]))
