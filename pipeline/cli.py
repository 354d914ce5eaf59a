"""Typer commands, one per DVC stage; each only wires params and paths to its stage module."""

from __future__ import annotations

import contextlib
import logging
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Annotated

import typer

from pipeline import paths
from pipeline.params import DEFAULT_PARAMS_PATH, Params, ParamsError, load_params
from pipeline.prepare import GlueFormatError
from pipeline.shards import ShardError
from pipeline.tasks import Task, UnknownTaskError, get_task

app = typer.Typer(help="distillery: distil a fine-tuned BERT teacher into small BiLSTM students.", no_args_is_help=True)

TaskOption = Annotated[str, typer.Option("--task", "-t", help="GLUE task short name, e.g. sst2")]
ParamsOption = Annotated[Path, typer.Option("--params", help="params file")]
USER_ERRORS = (ParamsError, GlueFormatError, ShardError, UnknownTaskError, FileNotFoundError)


@app.callback()
def _configure_logging() -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s", stream=sys.stderr)


@contextlib.contextmanager
def _stage(task_name: str, params_path: Path) -> Iterator[tuple[Task, Params]]:
    """Resolve task and params; turn user errors into one clear line on stderr and exit code 1."""
    try:
        yield get_task(task_name), load_params(params_path)
    except USER_ERRORS as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(1) from None


@app.command()
def prepare(task: TaskOption, params: ParamsOption = DEFAULT_PARAMS_PATH) -> None:
    """Validate the GLUE TSV files of a task and write normalised Parquet splits."""
    from pipeline.prepare import run_prepare

    with _stage(task, params) as (spec, hp):
        run_prepare(spec, hp)


@app.command()
def teacher(task: TaskOption, params: ParamsOption = DEFAULT_PARAMS_PATH) -> None:
    """Fine-tune the BERT teacher on a task."""
    from pipeline.teacher import fine_tune

    with _stage(task, params) as (spec, hp):
        fine_tune(
            spec, hp, paths.PREPARED_DIR, paths.teacher_dir(spec.name),
            paths.training_curve(spec.name, "teacher"), paths.METRICS_DIR / "teacher" / f"{spec.name}.json",
        )


@app.command()
def augment(task: TaskOption, params: ParamsOption = DEFAULT_PARAMS_PATH) -> None:
    """Build the augmented transfer set (masking, POS replacement, n-gram sampling)."""
    from pipeline.augment import run_augment

    with _stage(task, params) as (spec, hp):
        run_augment(spec, hp, paths.prepared_split(spec.name, "train"), paths.transfer_set(spec.name))


@app.command()
def score(task: TaskOption, params: ParamsOption = DEFAULT_PARAMS_PATH) -> None:
    """Score the transfer set with the teacher into Parquet logit shards (resumable)."""
    from pipeline.score import run_score

    with _stage(task, params) as (spec, hp):
        run_score(spec, hp, paths.transfer_set(spec.name), paths.teacher_dir(spec.name), paths.shard_dir(spec.name))


@app.command()
def student(task: TaskOption, params: ParamsOption = DEFAULT_PARAMS_PATH) -> None:
    """Train the BiLSTM student on the teacher's logits (distillation)."""
    from pipeline.student.train import train_student

    with _stage(task, params) as (spec, hp):
        train_student(
            spec, hp, paths.shard_dir(spec.name), paths.PREPARED_DIR, paths.teacher_dir(spec.name),
            paths.student_dir(spec.name), paths.training_curve(spec.name, "student"),
        )


@app.command()
def baseline(task: TaskOption, params: ParamsOption = DEFAULT_PARAMS_PATH) -> None:
    """Train the same BiLSTM on the labelled training set only (no teacher, no augmentation)."""
    from pipeline.student.train import train_baseline

    with _stage(task, params) as (spec, hp):
        train_baseline(
            spec, hp, paths.PREPARED_DIR, paths.teacher_dir(spec.name),
            paths.baseline_dir(spec.name), paths.training_curve(spec.name, "baseline"),
        )


@app.command()
def evaluate(
    task: TaskOption,
    params: ParamsOption = DEFAULT_PARAMS_PATH,
    data: Annotated[Path | None, typer.Option(help="score this GLUE-format TSV instead of the dev split(s)")] = None,
    out: Annotated[Path | None, typer.Option(help="JSON report path (default: metrics/<task>.json for dev)")] = None,
) -> None:
    """Compare teacher, KD student and baseline: task metrics, parameters, CPU throughput."""
    from pipeline.evaluate import dev_splits, evaluate_splits, file_split, markdown_table
    from pipeline.io import write_json, write_text

    with _stage(task, params) as (spec, hp):
        splits = file_split(spec, data) if data else dev_splits(spec)
        report = evaluate_splits(spec, hp, splits)
        table = markdown_table(report)
        if data is None:
            write_json(report, out or paths.evaluation_metrics(spec.name))
            write_text(table, paths.evaluation_table(spec.name))
        elif out is not None:
            write_json(report, out)
        typer.echo(table)
