"""morphobench.io.cli_exit: the one error path of every stage CLI."""

from __future__ import annotations

import logging

from morphobench.io import MorphobenchError, cli_exit, setup_logging


def _bad_input():
    raise MorphobenchError("column 'x' has NaN")


def _bug():
    raise ZeroDivisionError("boom")


def test_cli_exit_codes_and_messages(tmp_path, capsys):
    logfile = tmp_path / "stage.log"
    setup_logging(logfile)
    try:
        assert cli_exit("morphobench.test run", lambda a, b=0: a + b, 1, b=2) == 0
        # user error: one line naming the command, no traceback, the chosen exit code
        assert cli_exit("morphobench.test run", _bad_input) == 1
        assert cli_exit("morphobench.test run", _bad_input, error_code=2) == 2
        err = capsys.readouterr().err
        assert "morphobench.test run: error: column 'x' has NaN" in err and "Traceback" not in err
        # anything else: logged with its traceback, exit code 1
        assert cli_exit("morphobench.test run", _bug) == 1
        err = capsys.readouterr().err
        assert "morphobench.test run failed" in err and "ZeroDivisionError: boom" in err and "Traceback" in err
        text = logfile.read_text()  # both also reach the --log file
        assert "error: column 'x' has NaN" in text and "ZeroDivisionError: boom" in text
    finally:
        logging.basicConfig(force=True, handlers=[logging.NullHandler()])
