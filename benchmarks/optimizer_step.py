"""One jitted VeLO step vs one jitted Adam step on the same parameter tree.

    python benchmarks/optimizer_step.py [--trees 1m,10m,model] [--steps 20] [--no-donate]

For each tree, each optimizer runs in a fresh subprocess (so peak memory is its own):
compile time (lower + compile), then the median wall time of `--steps` steps after 3
warm-up steps, each step = `tx.update` + `optax.apply_updates`, params and state donated
(unless --no-donate), followed by `block_until_ready`. Peak memory is the process's max
RSS (it includes ~0.3 GB for importing jax) and XLA's own temp allocation for the step.
VeLO uses VeLO-size random meta-parameters (same compute as the pretrained ones). The
printed ratio is VeLO / Adam from the same run.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time


def make_tree(name: str):
    import jax.numpy as jnp
    import numpy as np

    rng = np.random.default_rng(0)
    normal = lambda *shape: jnp.asarray(rng.standard_normal(shape, dtype=np.float32) * 0.05)  # noqa: E731
    if name == "1m":  # 4 x (512, 512) + biases, as in the reference's table
        return {f"layer{i}": {"kernel": normal(512, 512), "bias": jnp.zeros(512)} for i in range(4)}
    if name == "10m":  # 10 x (1000, 1000) + biases
        return {f"layer{i}": {"kernel": normal(1000, 1000), "bias": jnp.zeros(1000)} for i in range(10)}
    if name == "model":  # a 12-layer transformer-like mix: 149 tensors, 11.5M params
        d, tree = 256, {"embed": normal(8000, 256), "head": {"kernel": normal(256, 10), "bias": jnp.zeros(10)}}
        for i in range(12):
            tree[f"block{i:02d}"] = {
                "qkv": {"kernel": normal(d, 3 * d), "bias": jnp.zeros(3 * d)},
                "out": {"kernel": normal(d, d), "bias": jnp.zeros(d)},
                "mlp_in": {"kernel": normal(d, 4 * d), "bias": jnp.zeros(4 * d)},
                "mlp_out": {"kernel": normal(4 * d, d), "bias": jnp.zeros(d)},
                "ln1": {"scale": jnp.ones(d), "bias": jnp.zeros(d)},
                "ln2": {"scale": jnp.ones(d), "bias": jnp.zeros(d)},
            }
        return tree
    raise ValueError(f"unknown tree {name!r}")


def child(tree_name: str, opt: str, steps: int, donate: bool) -> dict:
    import jax
    import jax.numpy as jnp
    import numpy as np
    import optax

    from velojax import init_meta_params, optimizer

    params = make_tree(tree_name)
    grads = jax.tree.map(lambda p: jnp.full_like(p, 0.01) + 0.001 * p, params)
    if opt == "adam":
        tx = optax.adam(1e-3)
    else:
        tx = optimizer.velo(10_000, weights=init_meta_params(jax.random.PRNGKey(0)))

    def step(params, state, grads):
        updates, state = tx.update(grads, state, params, value=jnp.float32(1.0))
        return optax.apply_updates(params, updates), state

    state = tx.init(params)
    start = time.perf_counter()
    compiled = jax.jit(step, donate_argnums=(0, 1) if donate else ()).lower(params, state, grads).compile()
    compile_s = time.perf_counter() - start
    memory = compiled.memory_analysis()
    for _ in range(3):
        params, state = compiled(params, state, grads)
    jax.block_until_ready(params)
    times = []
    for _ in range(steps):
        start = time.perf_counter()
        params, state = compiled(params, state, grads)
        jax.block_until_ready(params)
        times.append(time.perf_counter() - start)
    return {
        "n_params": int(sum(p.size for p in jax.tree.leaves(params))),
        "n_tensors": len(jax.tree.leaves(params)),
        "median_ms": float(np.median(times) * 1e3),
        "min_ms": float(np.min(times) * 1e3),
        "compile_s": compile_s,
        "temp_mb": (memory.temp_size_in_bytes / 2**20) if memory is not None else float("nan"),
        "peak_rss_gb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--trees", default="1m,10m,model")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--no-donate", action="store_true")
    parser.add_argument("--child", nargs=2, metavar=("TREE", "OPT"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(child(*args.child, args.steps, not args.no_donate)))
        return

    print(
        f"{'tree':>6} {'params':>11} {'tensors':>7} | {'Adam ms':>8} {'VeLO ms':>8} {'ratio':>6} | "
        f"{'compile s A/V':>13} | {'peak RSS GB A/V':>15} | {'XLA temp MB A/V':>15}"
    )
    for tree in args.trees.split(","):
        results = {}
        for opt in ("adam", "velo"):
            cmd = [sys.executable, __file__, "--child", tree, opt, "--steps", str(args.steps)]
            if args.no_donate:
                cmd.append("--no-donate")
            out = subprocess.run(cmd, check=True, capture_output=True, text=True, env=os.environ).stdout
            results[opt] = json.loads(out.strip().splitlines()[-1])
        a, v = results["adam"], results["velo"]
        print(
            f"{tree:>6} {a['n_params']:>11,} {a['n_tensors']:>7} | {a['median_ms']:>8.1f} {v['median_ms']:>8.1f} "
            f"{v['median_ms'] / a['median_ms']:>5.1f}x | {a['compile_s']:>6.1f}/{v['compile_s']:<6.1f} | "
            f"{a['peak_rss_gb']:>7.2f}/{v['peak_rss_gb']:<7.2f} | {a['temp_mb']:>7.0f}/{v['temp_mb']:<7.0f}",
            flush=True,
        )


if __name__ == "__main__":
    main()
