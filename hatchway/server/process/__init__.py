"""The broker's processes: the primary (serve) and its API workers."""
