"""Output discipline: one-line errors at any width, untruncated piped data, safe names, file modes,
SIGTERM handled like Ctrl-C, environment faults named (exit 1, no "please report it")."""

from __future__ import annotations

import errno
import os
import signal
import stat
import subprocess
import sys
import time

import pytest


def test_errors_are_one_line_whatever_the_width(cli, tmp_path):
    deep = tmp_path / ("a-long-folder-name-" * 12) / "missing-tokenizer.json"
    res = cli("build-vocab", str(deep), "--quiet")
    assert res.exit_code == 3
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 2 and lines[0].startswith("error:") and lines[1].startswith("hint:"), res.stderr
    assert str(deep) in lines[0]


def test_usage_errors_are_one_line(cli):
    res = cli("hash", "--ids", "1", "--preset", "nope")
    assert res.exit_code == 2
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 2 and lines[0].startswith("error:") and "--help" in lines[1], res.stderr


def test_piped_stdout_is_never_truncated(cli, tmp_path):
    out = tmp_path / ("an-output-folder-whose-name-is-much-longer-than-eighty-columns-" * 2)
    res = cli("build-vocab", "--top", "2", "-o", str(out))
    assert res.exit_code == 0, res.output
    assert str(out) in res.stdout.replace("\n", "")
    assert "…" not in res.stdout


def test_file_modes_follow_the_umask(cli, tmp_path):
    res = cli("build-vocab", "--top", "0", "-o", str(tmp_path / "lay"))
    assert res.exit_code == 0, res.output
    mask = os.umask(0)
    os.umask(mask)
    for f in (tmp_path / "lay").iterdir():
        assert stat.S_IMODE(f.stat().st_mode) == 0o666 & ~mask, f.name


def test_escape_neutralises_terminal_sequences():
    from engram_cli.cli.output import escape

    s = escape("name\x1b[31m[red]x\r\x07")
    assert "\x1b" not in s and "\r" not in s and "\x07" not in s and "\\x1b" in s and "\\[red]" in s


@pytest.mark.parametrize("err,needle", [(errno.ENOSPC, "no space left"), (errno.EACCES, "permission denied"),
                                        (errno.EFBIG, "file too large")])
def test_environment_faults_are_named(err, needle):
    from engram_cli.cli.output import exit_for

    exc = exit_for(OSError(err, os.strerror(err), "/some/file"))
    assert exc.exit_code == 1


def test_environment_fault_message(capsys):
    from engram_cli.cli.output import exit_for

    exit_for(OSError(errno.ENOSPC, "No space left on device", "/x/out.safetensors"))
    err = capsys.readouterr().err
    assert "no space left on device: /x/out.safetensors" in err and "please report" not in err


def test_sigterm_is_an_interruption(tmp_path):
    code = ("import sys, engram_cli.cli.entry as e; sys.argv=['engram','build-vocab','--top','0'];"
            "e.main()")
    proc = subprocess.Popen([sys.executable, "-c", code], stderr=subprocess.PIPE, stdout=subprocess.PIPE,
                            cwd=tmp_path, env={**os.environ, "ENGRAM_DEBUG": ""})
    assert b"building" in proc.stderr.readline()  # logged just before the (seconds-long) token-map build
    time.sleep(0.3)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    assert b"interrupted" in err and b"Traceback" not in err
