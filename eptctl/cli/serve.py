"""Using stored adapters: eval (re-evaluate and store metrics) and predict (single or mixed-task batches)."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated

import typer

from eptctl.cli.common import (
    QUICK_PHASE_S, DataDirOption, LabelColumnOption, RegistryUrl, TextColumnOption, TextPairColumnOption,
    console_progress, fmt_metrics, open_registry, print_json,
)
from eptctl.core.errors import EptctlError

GEN = "Generation"
MaxNewTokens = Annotated[int | None, typer.Option(
    help="Generation: most tokens to write (default: the longest training target and a quarter more).", min=1,
    max=4096,
    rich_help_panel=GEN)]
Temperature = Annotated[float, typer.Option(help="Generation: 0 decodes greedily; above 0 samples.", min=0.0, max=100.0,
                                            rich_help_panel=GEN)]
TopP = Annotated[float, typer.Option(help="Generation: nucleus sampling mass in (0, 1] (with --temperature > 0).",
                                     min=0.0, max=1.0, rich_help_panel=GEN)]
# seeds reach numpy, whose legacy seeding takes at most 2**32 - 1
Seed = Annotated[int, typer.Option(help="Generation: seed of the sampler.", min=0, max=2**32 - 1, rich_help_panel=GEN)]
Stop = Annotated[list[str] | None, typer.Option(
    "--stop", help="Generation: stop at this string (repeatable); replaces the adapter's default (a line break when "
                   "its training targets were single lines).", rich_help_panel=GEN)]


def generation_options(max_new_tokens, temperature, top_p, seed, stop):
    """The decoding options of the command line; without ``--max-new-tokens`` each adapter keeps its own budget."""
    from eptctl.backbones.decoding import GenerationOptions

    return GenerationOptions(max_new_tokens=max_new_tokens, temperature=temperature, top_p=top_p, seed=seed,
                             stop=tuple(stop or ()))


def eval_adapter(
    ref: Annotated[str, typer.Argument(help="Adapter reference.")],
    split: Annotated[str, typer.Option(help="Split of the task's data: train, validation or test (train is the large one: add --max-eval N).")] = "test",
    data: Annotated[str | None, typer.Option("--data", help="Evaluate on this labelled file instead.")] = None,
    text_column: TextColumnOption = "text",
    text_pair_column: TextPairColumnOption = None,
    label_column: LabelColumnOption = None,
    max_eval: Annotated[int | None, typer.Option(help="Evaluate on at most N examples.", min=1, max=100_000_000)] = None,
    max_new_tokens: MaxNewTokens = None,
    model: Annotated[str | None, typer.Option(help="Backbone to run on (default: the adapter's).")] = None,
    no_store: Annotated[bool, typer.Option("--no-store", help="Do not store the metrics in the registry.")] = False,
    force: Annotated[bool, typer.Option("--force", help="Store even though the task's data changed since training.")] = False,
    data_dir: DataDirOption = None,
    registry: RegistryUrl = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print a JSON object.")] = False,
) -> None:
    """Re-evaluate a stored adapter and store its task's metrics (under the split name, or data:FILE).

    A subset (--max-eval below the training-time size) is stored as SPLIT[:N]; when the task's data changed since
    training nothing is stored, unless --force.

    Example: eptctl eval rt-polarity@latest --split test
    """
    from eptctl.workflows import evaluation

    reg = open_registry(registry)
    with console_progress(enabled=not as_json, delay=QUICK_PHASE_S):  # conversion, scoring or decoding on stderr
        result = evaluation.evaluate_stored(
            reg, ref, split=split, data_path=data, text_column=text_column, text_pair_column=text_pair_column,
            label_column=label_column, max_eval=max_eval, model=model, store=not no_store, force=force,
            max_new_tokens=max_new_tokens)
    if as_json:
        print_json(result)
        return
    typer.echo(f"{result['ref']} on {result['split']} ({result['examples']} examples): "
               f"{fmt_metrics(result['metrics'], result['metric'], limit=6)}"
               + ("" if no_store else " (stored)")
               + (f"; {result['truncated']} truncated to the adapter's max length" if result["truncated"] else ""))


def predict(
    ref: Annotated[str | None, typer.Argument(help="Adapter reference (omit with --adapters).")] = None,
    texts: Annotated[list[str] | None, typer.Argument(help="Texts to classify; none: read --file or stdin.")] = None,
    file: Annotated[str | None, typer.Option("--file", help="CSV/JSONL/Parquet/TXT file of inputs.")] = None,
    adapters: Annotated[str | None, typer.Option(help="Comma-separated refs for a mixed-task batch.")] = None,
    task_column: Annotated[str | None, typer.Option(help="Column naming each row's task or adapter (mixed).")] = None,
    text_column: TextColumnOption = "text",
    text_pair_column: TextPairColumnOption = None,
    batch_size: Annotated[int, typer.Option(help="Rows per forward pass.", min=1, max=4096)] = 64,
    max_new_tokens: MaxNewTokens = None,
    temperature: Temperature = 0.0,
    top_p: TopP = 1.0,
    seed: Seed = 0,
    stop: Stop = None,
    registry: RegistryUrl = None,
) -> None:
    """Run adapters on texts; prints one JSON line per input: the "label", every label's "scores" and
    "probabilities" (classification), the generated "output" (generation) or the "value" (regression).

    A score is the mean log-probability per token of the label's answer after the prompt (encoders: the head's
    log-probability); scores compare labels of one adapter, not adapters. The probabilities are the softmax of one
    row's scores: they sum to 1 over the task's labels, rank them as the scores do, and are not calibrated.
    Generation ends at a line break when no training target had one, unless --stop is given (it replaces that).

    Example: eptctl predict rt-polarity@latest "A triumph." "Dull and overlong."

    Example: eptctl predict bbc-headline@latest --file articles.txt --max-new-tokens 24

    Example: eptctl predict --adapters rt-polarity@latest,bbc-topic@latest --task-column task rows.csv
    """
    from eptctl.workflows import inference

    reg = open_registry(registry)
    if adapters:
        path = file or ref
        if not path or not task_column:
            raise EptctlError("a mixed-task batch needs a FILE and --task-column",
                              hint="eptctl predict --adapters A,B --task-column task rows.csv")
        servables = [inference.load_adapter(reg, r.strip()) for r in adapters.split(",") if r.strip()]
        rows = _mixed_rows(path, servables, task_column, text_column, text_pair_column)
        options = generation_options(max_new_tokens, temperature, top_p, seed, stop)
        with console_progress(delay=QUICK_PHASE_S):  # model conversion and a long scoring pass say so on stderr
            backbone = inference.backbone_for(servables)
            results = inference.predict_mixed(backbone, servables, rows, batch_size, options)
        for res in results:
            typer.echo(json.dumps(res))
        return
    if ref is None:
        raise EptctlError("predict needs an adapter reference", hint='eptctl predict rt-polarity@latest "some text"')
    servable = inference.load_adapter(reg, ref)
    columns = servable.spec.input_columns
    if len(columns) > 2:
        inference.check_pair(servable, None, "input")  # the one-line error: such a task is evaluated from files
    if columns and (text_column, text_pair_column) == ("text", None):
        # A task whose template names its columns reads them from the file unless told otherwise.
        text_column, text_pair_column = servable.spec.text_columns
    inputs = _inputs(texts, file, text_column, text_pair_column)
    options = generation_options(max_new_tokens, temperature, top_p, seed, stop)
    with console_progress(delay=QUICK_PHASE_S):
        backbone = inference.backbone_for([servable])
        results = inference.predict(backbone, servable, inputs, batch_size, options)
    for res in results:
        typer.echo(json.dumps(res))


def _inputs(texts, file, text_column, text_pair_column) -> list[tuple[str, str | None]]:
    """The texts to score, normalised as every other text (eptctl.data.text); refused with the place named."""
    from eptctl import data
    from eptctl.data import text

    if texts:
        return text.clean_inputs([(t, None) for t in texts], where="argument")
    if file:
        path = Path(file)
        if path.suffix == ".txt" and path.exists():
            lines = text.lines(path.read_bytes(), str(path))
        else:
            return data.read_texts(file, text_column=text_column, text_pair_column=text_pair_column)
    else:
        if sys.stdin.isatty():
            raise EptctlError("no input texts", hint='pass texts, --file FILE, or pipe lines on stdin')
        lines = text.lines(sys.stdin.buffer.read(), "stdin")
    if not lines:
        raise EptctlError("no input texts", hint="the input is empty")
    return [(line, None) for line in lines]


def _mixed_rows(path, servables, task_column, text_column, text_pair_column) -> list[tuple[int, str, str | None]]:
    from eptctl import data

    keys = {}
    for i, s in enumerate(servables):
        for key in (s.record.ref, s.record.task, s.record.id):
            keys.setdefault(key, i)
    tasks = [t for t, _ in data.read_texts(path, text_column=task_column)]
    texts = data.read_texts(path, text_column=text_column, text_pair_column=text_pair_column)
    rows = []
    for n, (task, (text, pair)) in enumerate(zip(tasks, texts), start=1):
        if task not in keys:
            raise EptctlError(f"row {n}: '{task}' in column '{task_column}' matches none of --adapters",
                              hint=f"use one of: {', '.join(sorted(k for k in keys if '@' in k or k in {s.record.task for s in servables}))}")
        rows.append((keys[task], text, pair))
    return rows
