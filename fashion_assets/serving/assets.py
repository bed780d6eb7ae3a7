"""Dagster wiring of the serving stage (issue 13)."""

import dagster as dg  # noqa: F401
