"""python -m eval: evaluate an optimizer on a suite against LR-tuned Adam, or run the demo.

    python -m eval --optimizer velo --weights PATH --suite velodrome83 --out DIR
    python -m eval --optimizer adam --suite tiny --out DIR --steps 200
    python -m eval demo [--out runs/demo]     # meta-train tiny_cpu, evaluate on `tiny`, report
    python -m eval ... --coordinator HOST:PORT --num-processes N --process-id K   # one of N processes

Run `python -m eval --help` for the options.
"""

from __future__ import annotations

import sys

from eval import cli, demo
from tasks.data import DatasetUnavailable
from velojax import cli_common


def main(argv: list[str]) -> int:
    if argv and argv[0] == "demo":
        return demo.main(argv[1:])
    return cli.main(argv)


if __name__ == "__main__":
    sys.exit(cli_common.run(main, prog="python -m eval", expected=(DatasetUnavailable,)))
