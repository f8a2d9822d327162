import subprocess
import sys


def test_library_imports_without_cli_frameworks():
    code = (
        "import sys, eptctl, eptctl.core.errors, eptctl.core.home, eptctl.methods, eptctl.backbones, eptctl.backbones.loading,"
        " eptctl.data, eptctl.engine.loop, eptctl.workflows.train, eptctl.workflows.inference, eptctl.workflows.evaluation, eptctl.workflows.compare, registry;"
        " import io; from eptctl.core.progress import ConsoleProgress; ConsoleProgress(io.StringIO()).note('a line');"
        "bad = [m for m in ('typer', 'rich') if m in sys.modules];"
        "print(bad); sys.exit(1 if bad else 0)"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_error_carries_hint():
    from eptctl.core.errors import EptctlError

    err = EptctlError("unknown task 'x'", hint="run `eptctl tasks`")
    assert "hint" in str(err) and err.message == "unknown task 'x'"
