"""The command's exit: its status, the exit hooks and everything written, without the interpreter's teardown."""

import subprocess
import sys
import textwrap


def _run(body: str, tmp_path):
    script = tmp_path / "command.py"
    script.write_text(textwrap.dedent(body))
    return subprocess.run([sys.executable, str(script), str(tmp_path)], capture_output=True, text=True, timeout=60)


def test_exit_now_runs_the_hooks_flushes_the_streams_and_keeps_the_status(tmp_path):
    proc = _run("""
        import atexit, pathlib, sys
        from icd_tune.platform.cli.finish import exit_now
        folder = pathlib.Path(sys.argv[1])
        atexit.register(lambda: (folder / "hook").write_text("ran"))
        atexit.register(lambda: print("from the last hook registered, run first"))
        print("buffered on a pipe, never flushed by hand")
        sys.stderr.write("and on stderr")
        exit_now(6)
        (folder / "after").write_text("exit_now returned")
    """, tmp_path)
    assert proc.returncode == 6
    assert proc.stdout.splitlines() == ["buffered on a pipe, never flushed by hand", "from the last hook registered, run first"]
    assert proc.stderr == "and on stderr"
    assert (tmp_path / "hook").read_text() == "ran" and not (tmp_path / "after").exists()


def test_exit_now_waits_for_a_thread_that_a_normal_exit_would_wait_for(tmp_path):
    proc = _run("""
        import pathlib, sys, threading, time
        from icd_tune.platform.cli.finish import exit_now
        folder = pathlib.Path(sys.argv[1])
        def late():
            time.sleep(0.3)
            (folder / "thread").write_text("finished")
        threading.Thread(target=late).start()
        exit_now(None)
    """, tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert (tmp_path / "thread").read_text() == "finished"
