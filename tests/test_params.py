from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from pipeline.cli import app
from pipeline.errors import ParamsError
from pipeline.params import GLUE_DIR_ENV, PRESETS, Params, load_params, preset_options
from tests.conftest import REPO_ROOT


def write(tmp_path: Path, content: dict | str) -> Path:
    path = tmp_path / "params.yaml"
    path.write_text(content if isinstance(content, str) else yaml.safe_dump(content))
    return path


def repo_params() -> dict:
    return yaml.safe_load((REPO_ROOT / "params.yaml").read_text())


def with_preset(raw: dict, name: str) -> dict:
    """raw params with a named preset's dotted keys set, as `dvc exp run -S` sets them."""
    for key, value in PRESETS[name].items():
        *sections, leaf = key.split(".")
        node = raw
        for section in sections:
            node = node[section]
        node[leaf] = value
    return raw


def test_repo_params_load_with_paper_defaults():
    params = load_params(REPO_ROOT / "params.yaml")
    assert (params.augment.p_mask, params.augment.p_pos, params.augment.p_ng) == (0.1, 0.1, 0.25)
    assert (params.augment.n_iter_single, params.augment.n_iter_pair) == (20, 10)
    assert params.bilstm.hidden_size == 150
    assert params.student.alpha == 0.0
    assert params.teacher.checkpoint == "packaged:all-MiniLM-L6-v2"


def test_unknown_key_is_named(tmp_path):
    raw = repo_params()
    raw["augment"]["p_maks"] = 0.2
    with pytest.raises(ParamsError, match=r"params.yaml: augment.p_maks: Extra inputs"):
        load_params(write(tmp_path, raw))


def test_wrong_type_is_named(tmp_path):
    raw = repo_params()
    raw["student"]["epochs"] = "many"
    with pytest.raises(ParamsError, match=r"student.epochs"):
        load_params(write(tmp_path, raw))


def test_out_of_range_and_cross_field_checks(tmp_path):
    raw = repo_params()
    raw["augment"].update(p_mask=0.7, p_pos=0.6)
    with pytest.raises(ParamsError, match="p_mask \\+ p_pos"):
        load_params(write(tmp_path, raw))
    raw = repo_params()
    raw["augment"]["p_ng"] = 1.5
    with pytest.raises(ParamsError, match="augment.p_ng"):
        load_params(write(tmp_path, raw))


def test_unknown_task_and_bad_yaml(tmp_path):
    raw = repo_params()
    raw["tasks"] = ["sst2", "squad"]
    with pytest.raises(ParamsError, match="unknown task 'squad'"):
        load_params(write(tmp_path, raw))
    with pytest.raises(ParamsError, match="not valid YAML"):
        load_params(write(tmp_path, "seed: [1,"))
    with pytest.raises(ParamsError, match="file not found"):
        load_params(tmp_path / "absent.yaml")


def test_glue_dir_env_override(tmp_path, monkeypatch):
    params = load_params(REPO_ROOT / "params.yaml")
    monkeypatch.setenv(GLUE_DIR_ENV, str(tmp_path))
    assert params.data.resolved_glue_dir() == tmp_path
    monkeypatch.delenv(GLUE_DIR_ENV)
    assert params.data.resolved_glue_dir() == Path("../shared/data/glue")


def write_preset(tmp_path: Path, name: str) -> Path:
    return write(tmp_path, with_preset(repo_params(), name))


def test_pair_tasks_train_with_their_own_batch_size(tmp_path):
    from pipeline.data.tasks import get_task

    params = load_params(REPO_ROOT / "params.yaml")
    assert params.student.batch_size_for(get_task("sst2")) == 50
    assert params.student.batch_size_for(get_task("qqp")) == 64  # measured on MRPC / STS-B (docs/method.md)
    assert params.baseline.batch_size_for(get_task("mnli")) == 32  # tuned for the small pair tasks (README)
    paper = load_params(write_preset(tmp_path, "paper"))
    assert paper.student.batch_size_for(get_task("qqp")) == 256


def test_mt_teacher_and_accumulation_params_are_validated(tmp_path):
    params = load_params(REPO_ROOT / "params.yaml")
    assert (params.mt_teacher.sampling, params.teacher.gradient_accumulation_steps) == ("proportional", 1)
    raw = repo_params()
    raw["mt_teacher"]["sampling"] = "round_robin"
    with pytest.raises(ParamsError, match=r"mt_teacher.sampling"):
        load_params(write(tmp_path, raw))
    raw = repo_params()
    raw["teacher"]["gradient_accumulation_steps"] = 0
    with pytest.raises(ParamsError, match=r"teacher.gradient_accumulation_steps"):
        load_params(write(tmp_path, raw))


def test_mkd_learns_from_the_single_task_teachers_unless_the_multitask_teacher_is_built(tmp_path):
    params = load_params(REPO_ROOT / "params.yaml")
    assert (params.mkd.teacher, params.mkd.init_from, params.mt_teacher.build) == ("single", "checkpoint", [])
    starts = {"biattentive": "checkpoint", "transformer": "teachers", "bilstm": "checkpoint"}
    assert {architecture: params.mkd.init_source(architecture) for architecture in params.mkd.students} == starts
    paper = load_params(write_preset(tmp_path, "paper"))  # Liu et al.'s MKD: the multi-task teacher, built
    assert (paper.mkd.teacher, paper.mt_teacher.build) == ("multitask", ["multitask"])
    assert {paper.mkd.init_source(architecture) for architecture in paper.mkd.students} == {"checkpoint"}
    raw = repo_params()
    raw["mkd"]["training"]["transformer"]["init_from"] = "mt_teacher"  # not built: named by the architecture's key
    with pytest.raises(ParamsError, match=r"mkd.training.transformer.init_from: mt_teacher needs mkd.teacher: multi"):
        load_params(write(tmp_path, raw))
    raw = repo_params()
    raw["mkd"]["teacher"] = "multitask"  # without its stages, the mkd stage would miss data/logits/multitask
    with pytest.raises(ParamsError, match=r"mkd.teacher: multitask needs .* mt_teacher.build: \[multitask\]"):
        load_params(write(tmp_path, raw))
    raw = repo_params()
    raw["mt_teacher"]["build"] = ["multitask"]  # a teacher no MKD student learns from: compare would not depend on it
    with pytest.raises(ParamsError, match=r"mt_teacher.build: \[multitask\] builds the teacher of mkd.teacher"):
        load_params(write(tmp_path, raw))
    raw["mkd"]["init_from"] = "mt_teacher"  # its encoder, while the single-task teachers teach: not a dependency
    with pytest.raises(ParamsError, match=r"mkd.init_from: mt_teacher needs mkd.teacher: multitask"):
        load_params(write(tmp_path, raw))


def test_inference_precision_is_separate_from_training_precision(tmp_path):
    params = load_params(REPO_ROOT / "params.yaml")
    assert (params.score.precision, params.teacher.mixed_precision) == ("fp32", "auto")
    raw = repo_params()
    raw["score"]["precision"] = "int8"
    with pytest.raises(ParamsError, match=r"score.precision: Input should be 'fp32', 'bf16', 'fp16' or 'auto'"):
        load_params(write(tmp_path, raw))


def flatten(section: dict, prefix: str = "") -> dict:
    flat = {}
    for key, value in section.items():
        if isinstance(value, dict):
            flat.update(flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_preset_sets_existing_keys_that_differ_from_the_defaults(tmp_path, name):
    defaults = flatten(repo_params())
    assert set(PRESETS[name]) <= set(defaults), "a preset key that params.yaml does not have"
    assert any(defaults[key] != value for key, value in PRESETS[name].items()), "the preset changes nothing"
    params = flatten(load_params(write(tmp_path, with_preset(repo_params(), name))).model_dump(mode="json"))
    assert {key: params[key] for key in PRESETS[name]} == PRESETS[name]


def test_preset_options_are_what_dvc_exp_run_sets():
    """`-S key=value` pairs whose values, read as YAML (as DVC reads them), are the preset's."""
    options = preset_options("paper")
    assert options[0::2] == ["-S"] * len(PRESETS["paper"])
    pairs = [option.split("=", 1) for option in options[1::2]]
    assert {key: yaml.safe_load(value) for key, value in pairs} == PRESETS["paper"]


def test_unknown_preset_is_named():
    with pytest.raises(ParamsError, match=r"unknown preset 'tang': one of paper"):
        preset_options("tang")


def test_paper_preset_is_tang_et_al():
    paper = PRESETS["paper"]
    assert (paper["student.batch_size_pair"], paper["augment.n_iter_pair"], paper["student.steps"]) == (256, 10, None)


def test_preset_command_prints_the_options():
    result = CliRunner().invoke(app, ["preset", "paper"])
    assert result.exit_code == 0 and result.output.split() == preset_options("paper")
    result = CliRunner().invoke(app, ["preset", "tang"])
    assert result.exit_code == 1 and "unknown preset 'tang'" in result.output


def _differences(code: object, yaml_value: object, key: str) -> list[str]:
    """Dotted keys whose value differs between two dumped params trees."""
    if isinstance(code, dict) and isinstance(yaml_value, dict):
        return [
            found
            for name in sorted(set(code) | set(yaml_value))
            for found in _differences(code.get(name, "<absent>"), yaml_value.get(name, "<absent>"), f"{key}.{name}")
        ]
    return [] if code == yaml_value else [f"{key.lstrip('.')}: class {code!r}, params.yaml {yaml_value!r}"]


def test_class_defaults_are_params_yaml():
    """One set of defaults: ``Params()`` equals params.yaml field by field (so tests built on ``Params()`` train the
    configuration that ships), except ``tasks`` and ``task_defs``, params.yaml's example content."""
    shipped = load_params(REPO_ROOT / "params.yaml").model_dump(mode="json", exclude={"tasks", "task_defs"})
    defaults = Params().model_dump(mode="json", exclude={"tasks", "task_defs"})
    assert _differences(defaults, shipped, "") == []


def test_the_drift_test_sees_a_changed_default(tmp_path):
    raw = repo_params()
    raw["student"]["patience"] = 7
    examples = {"tasks", "task_defs"}
    changed = load_params(write(tmp_path, raw)).model_dump(mode="json", exclude=examples)
    found = _differences(Params().model_dump(mode="json", exclude=examples), changed, "")
    assert found == ["student.patience: class 3, params.yaml 7"]


def test_explicit_student_epochs_win_over_the_budget(tmp_path):
    """`-S student.epochs=6` on the shipped params (steps 7500): 6 epochs at BANKING77's 3,042 steps an epoch, not 2;
    `-S student.epochs=null -S student.steps=null` is refused."""
    raw = repo_params()
    assert raw["student"]["epochs"] is None and raw["student"]["steps"] == 7500
    assert load_params(REPO_ROOT / "params.yaml").student.max_epochs(3042) == 2
    raw["student"]["epochs"] = 6
    assert load_params(write(tmp_path, raw)).student.max_epochs(3042) == 6
    raw["student"].update(epochs=None, steps=None)
    with pytest.raises(ParamsError, match=r"student: .*epochs and steps are both null"):
        load_params(write(tmp_path, raw))


def test_paper_preset_loads_with_its_epochs(tmp_path):
    params = load_params(write(tmp_path, with_preset(repo_params(), "paper")))
    assert params.student.max_epochs(17687) == 3
