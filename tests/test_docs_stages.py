"""docs/stages.md's stage table says what dvc.yaml does: one row per stage, and its params column names exactly the
params the stage depends on (``TASK`` / ``ARCH`` standing for dvc.yaml's ``${item}``)."""

from __future__ import annotations

import re
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
PLACEHOLDERS = re.compile(r"\b(TASK|ARCH)\b")


def documented_params() -> dict[str, set[str]]:
    """Stage name -> the backticked names of the params column of docs/stages.md's table."""
    rows = {}
    for line in (ROOT / "docs" / "stages.md").read_text(encoding="utf-8").splitlines():
        cells = [cell.strip() for cell in line.strip().strip("|").split("|")]
        if len(cells) == 4 and "@" in cells[0] or cells[0] == "compare":
            stage = cells[0].split("@")[0]
            rows[stage] = {PLACEHOLDERS.sub("${item}", name) for name in re.findall(r"`([^`\s]+)`", cells[3])}
    return rows


def test_every_stage_has_a_row_with_its_params():
    stages = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]
    documented = documented_params()
    assert set(documented) == set(stages), (
        f"docs/stages.md rows {sorted(documented)} vs dvc.yaml stages {sorted(stages)}: add or remove a row"
    )
    for stage, definition in stages.items():
        params = {str(param) for param in definition.get("do", definition).get("params", [])}
        assert documented[stage] == params, (
            f"docs/stages.md, row {stage}: params column lists {sorted(documented[stage])}, dvc.yaml {sorted(params)}"
            " (write TASK or ARCH for ${item})"
        )


def test_the_table_is_read():
    documented = documented_params()
    assert documented["prepare"] >= {"seed", "data"} and "${item}" in documented["mkd"]
