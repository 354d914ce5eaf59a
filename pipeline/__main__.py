"""``python -m pipeline ...``: the Typer app of pipeline/cli.py."""

from pipeline.cli import app

app()
