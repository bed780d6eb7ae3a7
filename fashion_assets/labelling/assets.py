"""Dagster wiring of the labelling stage (issue 14)."""

import dagster as dg  # noqa: F401
