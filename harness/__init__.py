"""tokbench harness: suites, runner, statistics, hardware profile, model sources, CLI.

Kept import-light: backend workers import parts of this package, possibly under another
interpreter that has only the standard library and its engine.
"""

__version__ = "0.1.0"
