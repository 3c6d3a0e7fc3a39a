"""Shared by every part of the broker: errors, crypto, log lines, metrics, CPU pool, TLS."""
