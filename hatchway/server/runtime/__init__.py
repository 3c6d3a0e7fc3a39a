"""The broker process's shared state and the services on it: config, limits, audit."""
