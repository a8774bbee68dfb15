"""`python -m node` runs the `radnode` command."""

import sys

from node.cli.main import main

sys.exit(main())
