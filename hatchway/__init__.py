"""Hatchway: a self-hosted, AWS-compatible Session Manager."""

__version__ = "0.1.0"
