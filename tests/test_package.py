import subprocess
import sys


def test_library_imports_without_cli_frameworks():
    code = (
        "import sys, eptctl, eptctl.errors, eptctl.home, eptctl.methods, eptctl.backbones, eptctl.models,"
        " eptctl.data, eptctl.training, eptctl.runs, eptctl.inference, eptctl.evaluation, eptctl.compare, registry;"
        "bad = [m for m in ('typer', 'rich') if m in sys.modules];"
        "print(bad); sys.exit(1 if bad else 0)"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_error_carries_hint():
    from eptctl.errors import EptctlError

    err = EptctlError("unknown task 'x'", hint="run `eptctl tasks`")
    assert "hint" in str(err) and err.message == "unknown task 'x'"
