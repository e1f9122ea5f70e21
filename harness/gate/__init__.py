"""The regression gate: statistics, thresholds, run matching; pure functions over stored runs."""

DEFAULT_FILE = "tokbench-gate.toml"  # the thresholds file `ab` and `gate` read when present
