"""`python -m velojax`: the offline demo (`velojax/demo.py`), or with the subcommand
`fetch-weights`, the download of the official pretrained VeLO weights."""

import argparse
import sys

from velojax import cli_common, demo, pretrained

FETCH_COMMAND = "fetch-weights"


def _fetch_doc() -> str:
    return f"""Download the official pretrained VeLO weights (about 9 MB) once, with progress on stderr.

By default the file goes to the cache, where velojax.optimizer.velo(num_steps) finds it:
  {pretrained.cached_weights_path()}
and its sha256 is recorded beside it (params.sha256), so later uses detect a damaged copy.
With --to it goes to PATH instead (use it with {pretrained.WEIGHTS_ENV}=PATH). The download is
kept only if it loads as VeLO weights and, when a digest is known (--sha256,
${pretrained.SHA256_ENV}, or velojax.pretrained.VELO_SHA256), has that sha256; otherwise
nothing is written. Prints "<sha256>  <path>" on stdout, the format of sha256sum. No
retries: each socket operation times out after --timeout seconds.

examples:
  python -m velojax fetch-weights                      # into the cache
  python -m velojax fetch-weights --to ./params        # then VELOJAX_WEIGHTS=./params elsewhere
  python -m velojax fetch-weights --sha256 <64 hex digits>  # refuse any other file
"""


def fetch_main(argv: list[str]) -> int:
    """`python -m velojax fetch-weights [--to PATH] [--url URL] [--sha256 HEX] [--timeout S]`."""
    parser = argparse.ArgumentParser(
        prog=f"python -m velojax {FETCH_COMMAND}",
        description=_fetch_doc(),
        formatter_class=cli_common.HelpFormatter,
        epilog=cli_common.EPILOG,
    )
    parser.add_argument("--to", metavar="PATH", help="write the file here (a file, or a directory to hold "
                        "`params`) instead of the cache")  # fmt: skip
    parser.add_argument("--url", default=pretrained.VELO_URL,
                        help="where to download from (default: the official bucket, pretrained.VELO_URL)")  # fmt: skip
    parser.add_argument("--sha256", metavar="HEX", help=f"the expected sha256 (default: ${pretrained.SHA256_ENV}, "
                        "else velojax.pretrained.VELO_SHA256, else none: then the digest is only printed)")  # fmt: skip
    parser.add_argument("--timeout", type=float, default=10.0, help="socket timeout in seconds")
    args = parser.parse_args(argv)
    path, digest = pretrained.fetch_weights(
        args.to, url=args.url, sha256=args.sha256, timeout=args.timeout, progress=pretrained.ProgressPrinter()
    )
    print(f"{digest}  {path}")
    if pretrained.expected_sha256(args.sha256) is None:  # nothing vouched for the file: say how to pin it
        print(f"no sha256 was known for it; to insist on this one elsewhere: {pretrained.SHA256_ENV}={digest}",
              file=sys.stderr)  # fmt: skip
    return 0


def main(argv: list[str]) -> int | None:
    """The demo, or `fetch-weights` when that is the first argument."""
    if argv[:1] == [FETCH_COMMAND]:
        return fetch_main(argv[1:])
    return demo.main(argv)


if __name__ == "__main__":
    sys.exit(cli_common.run(main, prog="python -m velojax"))
