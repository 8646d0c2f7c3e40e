"""The quiet console: the project's lines on the terminal, everything else in the run's log, errors on both."""

import logging
import os
import sys

import pytest

from icd_tune.platform.cli import console


@pytest.fixture
def library_logger():
    """A library's logger as Ray, MLflow and Optuna set theirs up: its own handler on the process's stderr."""
    logger = logging.getLogger("icd_tune_test_library")
    stderr = open(2, "w", closefd=False)
    handler = logging.StreamHandler(stderr)
    logger.addHandler(handler)
    logger.propagate = False
    yield logger
    logger.removeHandler(handler)


def _third_party_output(logger):
    logger.warning("a library warning")
    print("a library's table")
    os.write(2, b"a C++ line on descriptor 2\n")
    os.write(1, b"a C++ line on descriptor 1\n")
    sys.stderr.write("a write to sys.stderr\n")


def test_quiet_sends_third_party_output_to_the_log_and_keeps_project_lines_and_errors(tmp_path, capfd, library_logger):
    with console.quiet():
        console.say("before the folder")
        _third_party_output(library_logger)
        assert console.attach_log(tmp_path) == tmp_path / console.LOG_NAME
        console.say("after the folder")
        print("more of a library's output")
        logging.getLogger("ray.tune.execution").error("a trial failed")
        with console.shown():
            print("a progress line of the project")
    captured = capfd.readouterr()
    assert captured.out.splitlines() == ["before the folder", "after the folder", "a progress line of the project"]
    assert captured.err.splitlines() == ["ERROR ray.tune.execution: a trial failed"]
    log = (tmp_path / console.LOG_NAME).read_text()
    for line in ("a library warning", "a library's table", "a C++ line on descriptor 2", "a C++ line on descriptor 1",
                 "a write to sys.stderr", "more of a library's output"):
        assert line in log  # collected before the folder existed, then in the folder
    print("after the run")
    os.write(2, b"after the run on 2\n")
    assert capfd.readouterr() == ("after the run\n", "after the run on 2\n")
    assert console.log_path() is None and console.out() is sys.stdout


def test_a_run_that_fails_before_its_folder_exists_shows_what_was_collected(capfd):
    with pytest.raises(RuntimeError):
        with console.quiet():
            os.write(2, b"cannot connect to the cluster\n")
            raise RuntimeError("refused")
    assert "cannot connect to the cluster" in capfd.readouterr().err


def test_verbose_changes_nothing(tmp_path, capfd):
    with console.quiet(enabled=False):
        print("a library's table")
        console.say("a project line")
        assert console.attach_log(tmp_path) is None
    assert capfd.readouterr().out.splitlines() == ["a library's table", "a project line"]
    assert not (tmp_path / console.LOG_NAME).exists()
