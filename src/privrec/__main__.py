"""``python -m privrec`` runs the command line, like the ``privrec`` script."""

from privrec.cli.main import main

main()
