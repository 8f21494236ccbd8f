"""`python -m services.cli` is the `sluice` console script."""

from services.cli.main import app

app()
