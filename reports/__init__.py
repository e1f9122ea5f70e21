"""Reporting: tables (and later plots and pages) rendered from stored results, never from a live run."""
