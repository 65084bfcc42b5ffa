import sys

from velojax import cli_common
from velojax.demo import main

if __name__ == "__main__":
    sys.exit(cli_common.run(main, prog="python -m velojax"))
