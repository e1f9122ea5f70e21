"""Engine adapters. Each lives in its own module and imports its engine only inside a worker."""
