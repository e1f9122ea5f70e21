"""`python -m harness.cli`: the tokbench command."""

from harness.cli.main import entry

entry()
