"""dvc.yaml's artifacts block declares every deployable model the default pipeline writes."""

from __future__ import annotations

from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]


def _stage_outputs(dvc_yaml: dict) -> set[str]:
    """Every output path of every stage, with each foreach item substituted."""
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    outputs: set[str] = set()
    for stage in dvc_yaml["stages"].values():
        foreach = stage.get("foreach")
        body = stage.get("do", stage)
        items = [None] if foreach is None else _resolve(foreach, params)
        for item in items:
            for out in body.get("outs", []):
                path = next(iter(out)) if isinstance(out, dict) else out
                outputs.add(path.replace("${item}", str(item)))
    return outputs


def _resolve(foreach: object, params: dict) -> list:
    """A foreach list, literal or a ``${params.key}`` reference."""
    if isinstance(foreach, list):
        return foreach
    value: object = params
    for key in str(foreach).strip("${}").split("."):
        value = value[key]  # type: ignore[index]
    return list(value)  # type: ignore[arg-type]


def test_every_default_task_and_mkd_student_is_a_declared_artifact():
    dvc_yaml = yaml.safe_load((ROOT / "dvc.yaml").read_text())
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    artifacts = dvc_yaml["artifacts"]
    expected = {f"models/student/{t}" for t in params["tasks"]} | {f"models/export/{t}" for t in params["tasks"]}
    expected |= {f"models/mkd/{a}" for a in params["mkd"]["students"]}
    expected |= {f"models/export/mkd/{a}" for a in params["mkd"]["students"]}
    assert {artifact["path"] for artifact in artifacts.values()} == expected
    # Each declared path is what a stage writes, so `dvc artifacts get` finds it in the cache after `dvc repro`.
    assert expected <= _stage_outputs(dvc_yaml)
    assert all(artifact["type"] == "model" for artifact in artifacts.values())
