"""`python -m node` runs the `radnode` command."""

import sys

from node.cli.main import main

if __name__ == "__main__":  # listener processes re-import this module when spawned
    sys.exit(main())
