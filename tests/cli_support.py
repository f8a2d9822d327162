"""The CLI driven in-process, as the CLI tests use it: run a command, expect success, or expect a user error."""

from __future__ import annotations

from typer.testing import CliRunner

from eptctl.cli.app import app


def run(*args, input=None):
    """``eptctl ARGS`` in this process (arguments may be paths or numbers); the click Result."""
    return CliRunner().invoke(app, [str(a) for a in args], input=input)


def ok(*args, input=None):
    """``run`` that must exit 0."""
    result = run(*args, input=input)
    assert result.exit_code == 0, result.output + (result.stderr or "")
    return result


def user_error(result, *needles, notes: bool = False, quiet_stdout: bool = False) -> str:
    """Assert the house rule for a user error: exit 2, one line on stderr starting with "error:" and holding a hint
    and each needle, no traceback. ``notes``: progress notes may come before it; ``quiet_stdout``: nothing on
    stdout. Returns the error line."""
    assert result.exit_code == 2, result.output
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    if notes and lines and lines[-1].startswith("error:"):
        lines = [line for line in lines if line.startswith("error:")]
    assert len(lines) == 1 and lines[0].startswith("error:") and "hint:" in lines[0], result.stderr
    assert "Traceback" not in result.output
    if quiet_stdout:
        assert not result.stdout
    for needle in needles:
        assert needle in lines[0], lines[0]
    return lines[0]
