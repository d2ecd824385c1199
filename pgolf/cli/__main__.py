"""``python -m pgolf.cli``: the ``pgolf`` command."""
import sys

from pgolf.cli import main

if __name__ == "__main__":
    sys.exit(main())
