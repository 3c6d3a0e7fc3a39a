"""The ``hatchway`` command."""
