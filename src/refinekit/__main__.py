"""``python -m refinekit`` runs the command line."""

from .cli import main

main()
