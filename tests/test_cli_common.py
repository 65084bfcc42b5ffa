"""Command-line conventions: expected failures are one message, help shows defaults and examples."""

import argparse
import json

import pytest

from meta_train.__main__ import main as meta_train_main
from velojax import cli_common
from velojax.checkpoint import CheckpointError


def _failing(err):
    def main(argv):
        assert "--debug" not in argv
        raise err

    return main


ERRORS = [FileNotFoundError("no file at x"), KeyError("unknown suite 'x'"), CheckpointError("bad")]


@pytest.mark.parametrize("err", ERRORS)
def test_expected_errors_print_one_message_and_return_2(err, capsys):
    assert cli_common.run(_failing(err), [], prog="python -m x") == 2
    assert capsys.readouterr().err == f"python -m x: error: {cli_common.message(err)}\n"
    assert cli_common.message(KeyError("unknown suite 'x'")) == "unknown suite 'x'"  # not repr's quotes
    with pytest.raises(type(err)):
        cli_common.run(_failing(err), ["--debug"], prog="python -m x")


def test_unexpected_errors_keep_their_traceback():
    with pytest.raises(ZeroDivisionError):
        cli_common.run(_failing(ZeroDivisionError()), [], prog="python -m x")
    assert cli_common.run(lambda argv: None, [], prog="python -m x") == 0


def test_help_states_defaults_but_not_none_or_false():
    p = argparse.ArgumentParser(formatter_class=cli_common.HelpFormatter, description="examples:\n  run it")
    p.add_argument("--n", type=int, default=3, help="how many")
    p.add_argument("--lrs", default=(0.1, 0.3), help="rates")
    p.add_argument("--out", help="where")
    p.add_argument("--quiet", action="store_true", help="say less")
    text = p.format_help()
    assert "how many (default: 3)" in text and "rates (default: 0.1,0.3)" in text
    assert "where\n" in text and "say less\n" in text and "examples:\n  run it" in text


def test_meta_train_prints_a_config_with_its_overrides(capsys):
    assert meta_train_main(["--config", "tiny_cpu", "--print-config", "meta_lr=0.005"]) == 0
    assert json.loads(capsys.readouterr().out)["meta_lr"] == 0.005
    with pytest.raises(SystemExit):
        meta_train_main(["--config", "tiny_cpu"])  # no --workdir


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--coordinator", "127.0.0.1:1"], "--coordinator needs --num-processes and --process-id"),
        (["--num-processes", "2", "--process-id", "0"], "need --coordinator HOST:PORT"),
        (["--coordinator", "127.0.0.1:1", "--num-processes", "2", "--process-id", "2"], "--process-id must be in 0..1"),
    ],
)
def test_meta_train_checks_its_cluster_flags_before_joining(flags, message, capsys, tmp_path):
    with pytest.raises(SystemExit) as exit_info:
        meta_train_main(["--config", "tiny_cpu", "--workdir", str(tmp_path), *flags])
    assert exit_info.value.code == 2 and message in capsys.readouterr().err
    assert not any(tmp_path.iterdir())  # nothing started
