"""The data channel: the websocket relay between a client and a node."""
