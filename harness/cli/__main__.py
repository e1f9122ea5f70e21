"""`python -m harness.cli`: the tokbench command."""

import sys

from harness.cli.main import main

sys.exit(main())
