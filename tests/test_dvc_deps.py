"""dvc.yaml's deps cannot drift: each stage lists exactly the pipeline files its command can import, and exactly the
data pipeline/paths.py declares it reads (``STAGE_INPUTS``).

A missing file means DVC can skip a needed rerun; a superfluous one reruns a stage for code it does not use. The
import closure is static (``tests/import_closure.py``): the test reads sources and imports nothing from pipeline/.
"""

from __future__ import annotations

import copy
import shutil
import textwrap
from pathlib import Path

import pytest
import yaml

from pipeline import paths
from tests.import_closure import (
    check_stages,
    closure_files,
    command_files,
    import_chain,
    is_code_dep,
    module_closure,
    read_cli,
    rewrite_code_deps,
    stage_command,
)

ROOT = Path(__file__).resolve().parents[1]
DVC_YAML = yaml.safe_load((ROOT / "dvc.yaml").read_text())
STAGES = list(DVC_YAML["stages"])


def _report(root: Path, dvc_yaml: dict, stage: str):
    return next(report for report in check_stages(root, dvc_yaml) if report.stage == stage)


@pytest.mark.parametrize("stage", STAGES)
def test_stage_code_deps_are_its_import_closure(stage):
    report = _report(ROOT, DVC_YAML, stage)
    assert report.expected, f"{stage}: empty import closure (is {report.command!r} wired to a module?)"
    assert report.ok, report.message()


def _data_deps(definition: dict) -> set[str]:
    body = definition.get("do", definition)
    deps = [next(iter(dep)) if isinstance(dep, dict) else dep for dep in body.get("deps", [])]
    return {str(dep) for dep in deps if not is_code_dep(str(dep))}


@pytest.mark.parametrize("stage", STAGES)
def test_stage_data_deps_are_what_it_reads(stage):
    """dvc.yaml's data deps of a stage are what pipeline/paths.py declares the stage reads (STAGE_INPUTS)."""
    listed = _data_deps(DVC_YAML["stages"][stage])
    declared = paths.stage_inputs(stage)
    assert stage in paths.STAGE_INPUTS, (
        f"stage {stage!r}: declare the files and folders it reads in pipeline/paths.py STAGE_INPUTS "
        f"(dvc.yaml lists {sorted(listed)})"
    )
    assert listed == declared, (
        f"stage {stage!r}: dvc.yaml's data deps differ from what it reads (pipeline/paths.py STAGE_INPUTS): "
        f"missing {sorted(declared - listed)}, superfluous {sorted(listed - declared)}"
    )


def test_every_declared_stage_is_in_dvc_yaml():
    assert set(paths.STAGE_INPUTS) <= set(STAGES), set(paths.STAGE_INPUTS) - set(STAGES)


def test_a_read_a_stage_cannot_list_is_covered_by_the_stage_that_makes_its_dep():
    """mkd reads models/mt_teacher (init_from: mt_teacher) through data/logits/${mkd.teacher}: with
    mkd.teacher: multitask that is mt_score's output, and mt_score depends on the multi-task teacher."""
    outs = {}
    for stage, definition in DVC_YAML["stages"].items():
        body = definition.get("do", definition)
        for out in body.get("outs", []):
            outs[str(next(iter(out)) if isinstance(out, dict) else out)] = stage
    for stage, reads in paths.STAGE_INPUTS_VIA.items():
        for read, via in reads.items():
            via = Path(via).as_posix()
            assert via in _data_deps(DVC_YAML["stages"][stage]), f"{stage}: {via} is not among its deps"
            rendered = via.replace("${mkd.teacher}", "multitask")
            makers = [maker for out, maker in outs.items() if Path(out).parent.as_posix() == rendered]
            assert makers, f"no stage writes {rendered}/<task>"
            for maker in makers:
                assert any(dep.startswith(read.as_posix()) for dep in _data_deps(DVC_YAML["stages"][maker])), (
                    f"{maker} makes {rendered} but does not depend on {read}: {stage} would miss its change"
                )


def test_the_declared_task_file_is_the_one_stages_read():
    from pipeline.data.tasks import task_file

    for stage in ("augment", "score"):  # the CLI resolves a task of your own from it
        assert task_file(paths.ITEM, paths.PREPARED_DIR).as_posix() in paths.stage_inputs(stage)


def test_no_catch_all_code_dep():
    for stage, definition in DVC_YAML["stages"].items():
        deps = definition.get("do", definition).get("deps", [])
        assert not {"pipeline", "pipeline/"} & set(map(str, deps)), f"{stage}: list files, not the whole package"


# --- the closure itself, on synthetic packages ------------------------------------------------------------------


def _package(root: Path, files: dict[str, str]) -> Path:
    """Write ``pipeline/<name>`` files (dedented) under ``root``; missing package ``__init__.py`` files empty."""
    for name, text in files.items():
        path = root / "pipeline" / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(textwrap.dedent(text))
    for folder in [root / "pipeline", *(root / "pipeline").rglob("*")]:
        if folder.is_dir() and not (folder / "__init__.py").exists():
            (folder / "__init__.py").write_text("")
    return root


def test_closure_follows_module_and_function_level_imports(tmp_path):
    root = _package(
        tmp_path,
        {
            "a.py": "import pipeline.b\n",
            "b.py": "def f():\n    from pipeline import c\n    return c\n",
            "c.py": "X = 1\n",
            "unused.py": "import pipeline.a\n",
        },
    )
    assert module_closure(root, ["pipeline.a"]) == {"pipeline", "pipeline.a", "pipeline.b", "pipeline.c"}
    # the empty pipeline/__init__.py runs no code: not a dependency
    assert closure_files(root, ["pipeline.a"]) == {"pipeline/a.py", "pipeline/b.py", "pipeline/c.py"}
    assert import_chain(root, ["pipeline.a"], "pipeline.c") == ["pipeline.a", "pipeline.b", "pipeline.c"]


def test_closure_import_forms(tmp_path):
    root = _package(
        tmp_path,
        {
            "sub/__init__.py": '"""A package with code."""\nLIMIT = 3\n',
            "sub/mod.py": "from .helper import VALUE\nfrom . import sibling\n",
            "sub/helper.py": "VALUE = 1\n",
            "sub/sibling.py": "",
            "names.py": "from pipeline.sub.mod import something\n",  # a name, not a submodule: the module counts
            "typed.py": (
                "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    import pipeline.heavy\n"
                "else:\n    import pipeline.light\n"
            ),
            "heavy.py": "",
            "light.py": "",
            "dynamic.py": "import importlib\nmod = importlib.import_module('pipeline.light')\n",
        },
    )
    sub = {"pipeline/sub/__init__.py", "pipeline/sub/mod.py", "pipeline/sub/helper.py", "pipeline/sub/sibling.py"}
    assert closure_files(root, ["pipeline.names"]) == {"pipeline/names.py", *sub}
    assert closure_files(root, ["pipeline.typed"]) == {"pipeline/typed.py", "pipeline/light.py"}
    assert closure_files(root, ["pipeline.dynamic"]) == {"pipeline/dynamic.py", "pipeline/light.py"}


CLI = """
    import typer
    from pipeline import paths
    from pipeline.params import load_params
    from pipeline.unused_here import shown

    app = typer.Typer()
    shards_app = typer.Typer()
    app.add_typer(shards_app, name="shards")
    Option = paths.OPTION


    def _stage(name):
        from pipeline.helper_import import helper
        return load_params(name), helper


    @app.command()
    def teacher(task: str):
        from pipeline.stages.teacher import run
        run(_stage(task))


    @app.command("mt-score")
    def mt_score(teacher: str, student: Option = "x"):
        from pipeline.stages.score import run
        run(teacher)  # the option, not the teacher command


    @shards_app.command("show")
    def shards_show(task: str):
        shown(task)
"""


def test_cli_commands_and_what_they_use(tmp_path):
    modules = ["paths", "params", "unused_here", "helper_import", "stages/teacher", "stages/score"]
    root = _package(tmp_path, {"cli.py": CLI, **{f"{name}.py": "" for name in modules}})
    cli = read_cli(root)
    assert set(cli.commands) == {"teacher", "mt-score", "shards show"}
    assert stage_command("python -m pipeline shards show --task sst2", cli.commands) == "shards show"
    assert stage_command("python -m pipeline mt-score --teacher multitask", cli.commands) == "mt-score"
    with pytest.raises(AssertionError, match="no such command"):
        stage_command("python -m pipeline nope", cli.commands)
    assert command_files(root, "teacher") == {
        "pipeline/stages/teacher.py",
        "pipeline/helper_import.py",  # imported inside a cli helper the command calls
        "pipeline/params.py",  # a cli module-level name the helper uses
    }
    # its `teacher` argument is not the teacher command; `Option` (a cli constant) reads `paths`
    assert command_files(root, "mt-score") == {"pipeline/stages/score.py", "pipeline/paths.py"}
    assert command_files(root, "shards show") == {"pipeline/unused_here.py"}


# --- the check fails when the code moves and dvc.yaml does not ---------------------------------------------------


@pytest.fixture
def project_copy(tmp_path):
    shutil.copytree(ROOT / "pipeline", tmp_path / "pipeline", ignore=shutil.ignore_patterns("__pycache__"))
    return tmp_path


def test_a_new_import_without_its_dep_is_caught(project_copy):
    dvc_yaml = copy.deepcopy(DVC_YAML)
    # deps as they should be for the copy before the change, so the only difference is the new import
    before = _report(project_copy, dvc_yaml, "augment")
    assert "pipeline/data/glue.py" not in before.expected, "pick another module: augment already imports glue"
    dvc_yaml["stages"]["augment"]["do"]["deps"] = [
        dep for dep in dvc_yaml["stages"]["augment"]["do"]["deps"] if not dep.startswith("pipeline/")
    ] + sorted(before.expected)
    assert _report(project_copy, dvc_yaml, "augment").ok

    stage_module = project_copy / "pipeline" / "stages" / "augment.py"
    stage_module.write_text(stage_module.read_text() + "\nimport pipeline.data.glue  # noqa\n")
    after = _report(project_copy, dvc_yaml, "augment")
    assert not after.ok
    assert "pipeline/data/glue.py" in after.missing
    assert not after.superfluous
    message = after.message()
    assert "'augment'" in message and "pipeline/data/glue.py" in message
    assert "        - pipeline/data/glue.py" in message  # the line to paste, indented for a foreach stage


def test_a_dep_the_stage_does_not_use_is_caught():
    dvc_yaml = copy.deepcopy(DVC_YAML)
    deps = dvc_yaml["stages"]["augment"]["do"]["deps"]
    deps.append("pipeline/bench/score.py")
    report = _report(ROOT, dvc_yaml, "augment")
    assert "pipeline/bench/score.py" in report.superfluous
    assert "pipeline/bench/score.py" in report.message()


def test_a_listed_folder_is_caught():
    dvc_yaml = copy.deepcopy(DVC_YAML)
    body = dvc_yaml["stages"]["augment"]["do"]
    body["deps"] = [dep for dep in body["deps"] if not dep.startswith("pipeline/")] + ["pipeline/data"]
    report = _report(ROOT, dvc_yaml, "augment")
    assert not report.ok
    assert report.folders == ["pipeline/data"]
    data_files = {f"pipeline/data/{path.name}" for path in (ROOT / "pipeline" / "data").glob("*.py")}
    assert report.listed == data_files  # a folder covers the .py files under it
    assert report.superfluous == data_files - report.expected


def test_rewrite_fixes_drift_and_keeps_the_rest():
    """``python -m tests.import_closure --write`` (what fixes dvc.yaml) leaves only code deps changed."""
    text = (ROOT / "dvc.yaml").read_text()
    drifted = text.replace("        - pipeline/stages/augment.py\n", "        - pipeline/augment.py\n")
    assert drifted != text
    expected = {report.stage: report.expected for report in check_stages(ROOT, DVC_YAML)}
    fixed = rewrite_code_deps(drifted, expected)
    assert all(report.ok for report in check_stages(ROOT, yaml.safe_load(fixed)))
    assert [line for line in fixed.splitlines() if "- pipeline/" not in line] == [
        line for line in text.splitlines() if "- pipeline/" not in line
    ]
