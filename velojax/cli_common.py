"""Conventions shared by velojax's command lines (`python -m velojax|tasks|meta_train|eval`).

Help shows every default and keeps the description's examples as written (`HelpFormatter`).
Expected failures end in one clear message, not a traceback:

    sys.exit(cli_common.run(main, argv, prog="python -m eval", expected=(DatasetUnavailable,)))

`run` calls `main(argv)`; an expected error (a missing file or dataset, weights unavailable
offline, a bad config value, an unusable checkpoint) prints `prog: error: <message>` on
stderr and returns 2. `--debug` anywhere in argv is removed and lets the traceback through.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence

from velojax.checkpoint import CheckpointError
from velojax.pretrained import PretrainedWeightsUnavailable

EXPECTED: tuple[type[BaseException], ...] = (
    FileNotFoundError,
    KeyError,
    ValueError,
    CheckpointError,
    PretrainedWeightsUnavailable,
)
DEBUG_FLAG = "--debug"
EPILOG = f"Expected failures print one line; {DEBUG_FLAG} shows the traceback."


class HelpFormatter(argparse.RawDescriptionHelpFormatter):
    """Description and epilog as written (examples), and "(default: ...)" after every help text
    whose flag has a default (not None or False) that the text does not already state."""

    def _get_help_string(self, action):
        text = action.help or ""
        if action.default in (None, False, argparse.SUPPRESS) or "default" in text or action.option_strings == []:
            return text
        default = ",".join(map(str, action.default)) if isinstance(action.default, (list, tuple)) else "%(default)s"
        return f"{text} (default: {default})"


def message(err: BaseException) -> str:
    """The error's text (KeyError's without the quotes repr adds)."""
    text = err.args[0] if isinstance(err, KeyError) and err.args else err
    return str(text).strip() or type(err).__name__


def run(
    main: Callable[[list[str]], int | None],
    argv: Sequence[str] | None = None,
    *,
    prog: str,
    expected: tuple[type[BaseException], ...] = (),
) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    debug = DEBUG_FLAG in argv
    argv = [a for a in argv if a != DEBUG_FLAG]
    try:
        return main(argv) or 0
    except EXPECTED + tuple(expected) as err:
        if debug:
            raise
        print(f"{prog}: error: {message(err)}", file=sys.stderr)
        return 2


def add_cluster_flags(parser: argparse.ArgumentParser) -> None:
    """The flags that make a command one process of a `jax.distributed` cluster."""
    cluster = parser.add_argument_group("several processes (jax.distributed)")
    cluster.add_argument("--distributed", action="store_true", help="join a cluster detected from the environment "
                         "(TPU pods, Slurm, ...), or the one given by the flags below")  # fmt: skip
    cluster.add_argument("--coordinator", help="HOST:PORT of process 0")
    cluster.add_argument("--num-processes", type=int, help="how many processes (with --coordinator)")
    cluster.add_argument("--process-id", type=int, help="this process's index (with --coordinator)")


def join_cluster(args: argparse.Namespace) -> None:
    """`jax.distributed.initialize` as `add_cluster_flags`'s flags say (call it before any
    other jax use); a ValueError naming the flag when they are incomplete or inconsistent."""
    n, k = args.num_processes, args.process_id
    if args.coordinator and not args.distributed and (n is None or k is None):
        raise ValueError("--coordinator needs --num-processes and --process-id (or --distributed to detect them)")
    if (n is not None or k is not None) and not (args.coordinator or args.distributed):
        raise ValueError("--num-processes and --process-id need --coordinator HOST:PORT (or --distributed)")
    if n is not None and n < 1:
        raise ValueError(f"--num-processes must be >= 1, got {n}")
    if n is not None and k is not None and not 0 <= k < n:
        raise ValueError(f"--process-id must be in 0..{n - 1}, got {k}")
    if args.distributed or args.coordinator:
        import jax

        jax.distributed.initialize(args.coordinator, n, k)
