"""Managed nodes' side: registration and the control channel each node keeps open."""
