"""Progress as a user sees it: typed phases, the console reporter (lines in a log, Rich bars on a terminal), the
README's Python example with ``progress=True``, and ``eptctl train`` with its output in a pipe."""

from __future__ import annotations

import io
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest

from eptctl.core import events
from eptctl.core.progress import ConsoleProgress

ROOT = Path(__file__).resolve().parents[1]
TINY = "tiny-random-llama"


def test_phases_reach_the_innermost_phase_and_say_when_they_fail():
    seen: list[events.Event] = []
    events.advance(5)  # outside any phase: nothing happens
    with events.reporting(seen.append):
        with events.phase("outer", 2, unit="parts"):
            events.advance(1)
            with events.phase("inner", 3):
                events.advance(2)
                events.advance(1)
            events.advance(1)
        with pytest.raises(ValueError), events.phase("broken", 4):
            events.advance(1)
            raise ValueError("boom")
    names = [(type(e).__name__, e.name, getattr(e, "done", None)) for e in seen]
    assert names == [
        ("PhaseStarted", "outer", None), ("PhaseAdvanced", "outer", 1),
        ("PhaseStarted", "inner", None), ("PhaseAdvanced", "inner", 2), ("PhaseAdvanced", "inner", 3),
        ("PhaseDone", "inner", 3), ("PhaseAdvanced", "outer", 2), ("PhaseDone", "outer", 2),
        ("PhaseStarted", "broken", None), ("PhaseAdvanced", "broken", 1), ("PhaseDone", "broken", 1)]
    assert seen[-1].ok is False and seen[-4].ok is True
    assert events.current() is events.ignore  # the block's handler is gone with the block


def test_lines_in_a_log_come_in_order_with_every_tenth_and_a_heartbeat():
    """Not a terminal: a phase prints its start, each tenth (interval 0: no throttle), its end; a slow phase with no
    progress still prints a line once the log has been silent ``interval`` seconds."""
    stream = io.StringIO()
    reporter = ConsoleProgress(stream, interval=0)
    assert not reporter.live
    with events.reporting(reporter), events.phase("final evaluation: test", 20):
        for _ in range(10):
            events.advance(2)
    lines = stream.getvalue().splitlines()
    assert lines[0] == "final evaluation: test: 20 rows…"
    assert [re.match(r"final evaluation: test: (\d+)/20 rows", line)[1] for line in lines[1:-1]] == [
        str(n) for n in range(2, 20, 2)]
    assert re.fullmatch(r"final evaluation: test: 20 rows in \d+ s", lines[-1])

    slow = io.StringIO()
    reporter = ConsoleProgress(slow, interval=0.3)
    with reporter, events.phase("decoding", 4):
        deadline = time.monotonic() + 5
        while slow.getvalue().count("\n") < 2 and time.monotonic() < deadline:
            time.sleep(0.05)  # one slow batch: no advance at all
    heartbeat = slow.getvalue().splitlines()[1]
    assert heartbeat.startswith("decoding: 0/4 rows (0 %)"), slow.getvalue()


def test_a_training_run_reports_its_time_left_and_closes_its_bars():
    stream = io.StringIO()
    reporter = ConsoleProgress(stream, interval=0)
    plan = events.TrainingStarted(total=10, step=0, params={"total": 12, "prompt": 12}, batch_size=4, eval_every=5,
                                  eval_rows=8, final_rows=16)
    reporter(plan)
    for step in range(1, 11):
        reporter(events.StepDone(step=step, total=10, loss=0.5, lr=0.1))
        if step == 5:
            with events.phase("validation at step 5", 8, emit=reporter):
                events.advance(8)
    reporter(events.FinalEvaluation(best_step=10))
    reporter.close()
    text = stream.getvalue()
    assert "about" in text and "left: 6 steps at" in text  # the plan after 4 steps, evaluations included
    assert re.search(r"train: 10 steps in \d+ s \(loss 0\.5000", text)
    assert text.index("train: 10 steps in") < text.index("evaluating the kept checkpoint (step 10)")
    assert re.findall(r"train: \d+/10 steps \(\d+ %\), \d+ s, loss 0\.5000, [\d.]+ s/step, about", text)


def test_on_a_terminal_the_bars_are_live_and_leave_one_line_each():
    stream = io.StringIO()
    reporter = ConsoleProgress(stream, live=True)
    with reporter, events.phase("final evaluation: validation", 3):
        events.advance(3)
    assert "final evaluation: validation: 3 rows in" in stream.getvalue()
    assert reporter._out.progress is None  # no Live display left running


@pytest.fixture
def readme_example():
    """The README's Python API example (the block that calls train_task), with the docs tests' stand-ins."""
    from test_docs_examples import blocks

    code = next(code for code, _ in blocks(ROOT / "README.md") if "train_task(" in code)
    assert "progress=True" in code  # the README shows progress
    return code


def test_the_readme_example_prints_progress(readme_example, tmp_path, monkeypatch, capsys):
    """The README's example, run as written (a tiny backbone, 2 steps, a few rows): its progress reaches stderr."""
    from test_docs_examples import substitute

    from eptctl import backbones

    real_load = backbones.load
    monkeypatch.setattr(backbones, "load", lambda name=backbones.DEFAULT_MODEL, **kw: real_load(
        TINY if backbones.canonical_name(name) in backbones.EMBEDDED else name, **kw))
    monkeypatch.setenv("EPTCTL_HOME", str(tmp_path / "home"))
    monkeypatch.delenv("EPTCTL_REGISTRY_URL", raising=False)
    monkeypatch.setenv("EPTCTL_PROGRESS_INTERVAL", "0")
    code = substitute(readme_example, tmp_path).replace("progress=True", "progress=True, max_train=32, max_eval=24")
    code = code.replace("TrainConfig(steps=2)", "TrainConfig(steps=2, eval_batch_size=4)")  # 6 batches a pass
    exec(compile(code, "README.md Python API example", "exec"), {"__name__": "readme"})
    captured = capsys.readouterr()
    err = captured.err
    assert "rt-polarity@1" in captured.out  # the example's own print
    for needle in ("task rt-polarity: 32 train / 24 validation / 24 test examples", "loading smollm2-135m…",
                   "train: 2 steps…", "train: 2 steps in", "evaluating the kept checkpoint (step 2)",
                   "final evaluation: validation: 24 rows…", "final evaluation: test: 24 rows in"):
        assert needle in err, err
    assert re.search(r"final evaluation: test: \d+/24 rows \(\d+ %\)", err), err  # lines within the phase


def test_cli_train_prints_progress_lines_during_the_final_evaluation_into_a_pipe(tmp_path):
    """``eptctl train`` with stdout and stderr in pipes (a redirected log): lines during the final evaluation, every
    line in the order it happened, and stdout holds only the result."""
    env = {**os.environ, "EPTCTL_HOME": str(tmp_path / "home"), "PYTHONPATH": str(ROOT),
           "EPTCTL_PROGRESS_INTERVAL": "0"}
    env.pop("EPTCTL_REGISTRY_URL", None)
    proc = subprocess.run(
        [sys.executable, "-m", "eptctl", "train", "rt-polarity", "--model", TINY, "--steps", "4", "--batch-size", "4",
         "--max-train", "32", "--max-eval", "40", "--eval-batch-size", "4"],
        env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("registered rt-polarity@1"), proc.stdout
    lines = proc.stderr.splitlines()
    start = lines.index("evaluating the kept checkpoint (step 4) on validation and test…")
    end = next(i for i, line in enumerate(lines) if line.startswith("step 4: validation accuracy"))
    during = lines[start + 1:end]
    for split in ("validation", "test"):
        tenths = [line for line in during if re.match(rf"final evaluation: {split}: \d+/40 rows \(\d+ %\)", line)]
        assert len(tenths) == 9, during  # every tenth but the last, which is the phase's end line
        assert f"final evaluation: {split}: 40 rows…" in during
    assert any(line.startswith("train: 4 steps in") for line in lines[:start]), lines  # the bar ends first


def test_evaluation_prediction_and_decoding_passes_are_phases(tmp_path, monkeypatch):
    """A ``with ConsoleProgress():`` block shows eval's scoring pass, predict's pass over many rows, and the decoding
    passes of a generation task's evaluations, each with lines inside the pass."""
    from eptctl import backbones
    from eptctl.engine.config import TrainConfig
    from eptctl.workflows.evaluation import evaluate_stored
    from eptctl.workflows.inference import load_adapter, predict
    from eptctl.workflows.train import train_task
    from registry import Registry

    monkeypatch.setenv("EPTCTL_HOME", str(tmp_path / "home"))
    reg = Registry(f"sqlite:///{tmp_path / 'registry.db'}")
    backbone = backbones.load(TINY)
    small = {"registry": reg, "backbone": backbone, "max_train": 16, "max_eval": 8,
             "train_cfg": TrainConfig(steps=1, batch_size=4, eval_batch_size=2)}
    stream = io.StringIO()
    with ConsoleProgress(stream, interval=0):
        ref = train_task("rt-polarity", **small).record.ref
        train_task("bbc-headline", **small)
        evaluate_stored(reg, ref, split="test", max_eval=200, store=False)  # 4 batches of 64
        predict(backbone, load_adapter(reg, ref), [(f"review number {i}", None) for i in range(30)], batch_size=4)
    text = stream.getvalue()
    assert re.search(r"evaluating rt-polarity@1 on test: \d+/200 rows \(\d+ %\)", text), text
    assert re.search(r"scoring: \d+/30 rows \(\d+ %\)", text) and "scoring: 30 rows in" in text, text
    assert re.search(r"final evaluation: test \(decoding\): \d+/8 rows \(\d+ %\)", text), text


def test_a_logger_receives_the_lines_instead_of_the_stream(caplog):
    import logging

    stream = io.StringIO()
    with caplog.at_level(logging.INFO, logger="eptctl.test"):
        with ConsoleProgress(stream, interval=0, logger=logging.getLogger("eptctl.test")), events.phase("scoring", 2):
            events.advance(1)
            events.advance(1)
    assert stream.getvalue() == ""
    messages = [r.getMessage() for r in caplog.records if r.name == "eptctl.test"]
    assert messages[0] == "scoring: 2 rows…" and messages[1].startswith("scoring: 1/2 rows (50 %)"), messages
    assert re.fullmatch(r"scoring: 2 rows in \d+ s", messages[-1]), messages


def test_a_loss_read_at_an_earlier_step_says_which_step_it_is():
    """Losses are read from the device every few steps (no per-step sync): the line names the step of the loss it
    shows, so a repeated value does not read as a stalled run."""
    stream = io.StringIO()
    reporter = ConsoleProgress(stream, interval=0)
    reporter(events.TrainingStarted(total=20, step=0, params={"total": 12, "prompt": 12}, batch_size=4,
                                    eval_every=0, eval_rows=0, final_rows=8))
    for step in range(1, 21):
        reporter(events.StepDone(step=step, total=20, loss=0.25, lr=0.1, loss_step=step - step % 10 or 1))
    reporter.close()
    text = stream.getvalue()
    assert re.search(r"loss 0\.2500 \(step 10\)", text)  # a line between reads
    assert not re.search(r"20/20 steps.*\(step", text)  # at a read, the loss is this step's
