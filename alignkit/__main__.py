"""`python -m alignkit` is the `alignkit` command; under torchrun, `torchrun ... -m alignkit sft ...`."""
import sys

from alignkit.cli import main

if __name__ == "__main__":
    sys.exit(main())
