"""``python -m privrec`` runs the command line, like the ``privrec`` script."""

from privrec.cli.main import app

app(prog_name="privrec")
