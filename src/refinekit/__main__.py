"""``python -m refinekit`` runs the command line."""

from .cli import main

if __name__ == "__main__":  # importing this module (pydoc, test collectors) must not run the CLI
    main()
