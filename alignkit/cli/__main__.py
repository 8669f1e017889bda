"""`python -m alignkit.cli` is the `alignkit` command."""
import sys

from alignkit.cli import main

if __name__ == "__main__":
    sys.exit(main())
