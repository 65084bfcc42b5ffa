"""Offline demo: train a small MLP with VeLO and with Adam and print both loss curves.

    python -m velojax [--steps 300] [--weights PATH]

The task is embedded (a fixed random teacher network labels Gaussian inputs), so the
demo needs no data. The learned optimizer is velojax's newest shipped weights
(`optimizer.available_weights()[0]`, meta-trained by velojax itself, offline);
`--weights` takes another shipped name or a checkpoint path, and `--pretrained` the
official VeLO (downloaded once; offline it says so and falls back to the shipped weights).

    python -m velojax fetch-weights [--to PATH] [--sha256 HEX]

downloads the official VeLO weights with progress, checks them and prints their sha256
(`python -m velojax fetch-weights --help`).
"""

from __future__ import annotations

import argparse
import math
import time

import jax
import jax.numpy as jnp
import optax

from velojax import cli_common, optimizer
from velojax.pretrained import PretrainedWeightsUnavailable, load_pretrained


def make_task(seed: int = 0, dim: int = 32, hidden: int = 128, classes: int = 8, batch: int = 128):
    """(init, loss, batches): a 2-layer MLP classifying inputs labelled by a random teacher."""
    k_teacher, k_data = jax.random.split(jax.random.PRNGKey(seed))
    teacher = jax.random.normal(k_teacher, (dim, classes))

    def batches(step):
        x = jax.random.normal(jax.random.fold_in(k_data, step), (batch, dim))
        return x, jnp.argmax(jnp.tanh(x @ teacher) + 0.3 * jnp.sin(3 * x[:, :classes]), axis=-1)

    def init(key):
        k1, k2 = jax.random.split(key)
        return {
            "hidden": {"kernel": jax.random.normal(k1, (dim, hidden)) / math.sqrt(dim), "bias": jnp.zeros(hidden)},
            "out": {"kernel": jax.random.normal(k2, (hidden, classes)) / math.sqrt(hidden), "bias": jnp.zeros(classes)},
        }

    def loss(params, batch):
        x, y = batch
        h = jax.nn.relu(x @ params["hidden"]["kernel"] + params["hidden"]["bias"])
        logits = h @ params["out"]["kernel"] + params["out"]["bias"]
        return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()

    return init, loss, batches


def train(tx: optax.GradientTransformation, steps: int, seed: int = 0) -> list[float]:
    """Training losses of the demo task under `tx` (one jitted `lax.scan`)."""
    init, loss, batches = make_task(seed)
    params = init(jax.random.PRNGKey(seed + 1))

    def step(carry, t):
        params, state = carry
        value, grads = jax.value_and_grad(loss)(params, batches(t))
        updates, state = tx.update(grads, state, params, value=value)
        return (optax.apply_updates(params, updates), state), value

    _, losses = jax.jit(lambda p: jax.lax.scan(step, (p, tx.init(p)), jnp.arange(steps)))(params)
    return [float(x) for x in losses]


_EXAMPLES = """
examples:
  python -m velojax                           # the newest shipped weights against Adam, 300 steps
  python -m velojax --steps 1000 --weights small_v1
  python -m velojax --pretrained              # the official VeLO (downloaded once)
  python -m velojax fetch-weights             # only download the official VeLO weights (see its --help)
"""


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m velojax",
        description=__doc__ + _EXAMPLES,
        formatter_class=cli_common.HelpFormatter,
        epilog=cli_common.EPILOG,
    )
    parser.add_argument("--steps", type=int, default=300, help="training steps of each optimizer")
    parser.add_argument("--weights", help="shipped weights by name, or a VeLO checkpoint path "
                        "(default: the newest shipped weights)")  # fmt: skip
    parser.add_argument("--pretrained", action="store_true", help="use the official VeLO weights (download)")
    parser.add_argument("--adam-lr", type=float, default=3e-3, help="Adam's learning rate")
    args = parser.parse_args(argv)

    shipped = optimizer.available_weights()[0]
    weights, label = args.weights or shipped, f"learned: {args.weights or shipped}"
    if args.pretrained:
        try:
            weights, label = load_pretrained(), "VeLO (official pretrained weights)"
        except PretrainedWeightsUnavailable as e:
            print(str(e).splitlines()[0])
            print(f"-> using velojax's shipped learned optimizer {shipped!r} instead.\n")

    runs = {}
    for name, tx in (
        (label, optimizer.velo(args.steps, weights=weights)),
        (f"Adam lr={args.adam_lr} (untuned)", optax.adam(args.adam_lr)),
    ):
        start = time.perf_counter()
        runs[name] = train(tx, args.steps)
        print(f"trained with {name}: {time.perf_counter() - start:.1f} s")

    names = list(runs)
    print(f"\n{'step':>6}  " + "  ".join(f"{n:>34}" for n in names))
    for t in sorted({*range(0, args.steps, max(1, args.steps // 15)), args.steps - 1}):
        print(f"{t:>6}  " + "  ".join(f"{runs[n][t]:>34.4f}" for n in names))


if __name__ == "__main__":
    main()
