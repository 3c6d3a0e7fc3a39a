"""The Hatchway client: ``session-manager-plugin`` and ``hatchway start-session``.

* :mod:`.plugin` — the ``session-manager-plugin`` console script (AWS CLI's argv/env contract).
* :mod:`.start` — ``hatchway start-session``: StartSession with boto3, then the same session.
* :mod:`.session` — the data channel: websocket, reliable stream, handshake, reconnect.
* :mod:`.handler` — the session-type handler interface; :mod:`.shell` — shell sessions.
* :mod:`.terminal` — raw mode, window size, stdin reading, the ``~.`` escape.
* :mod:`.aws` — ResumeSession/TerminateSession/StartSession and the SigV4-signed upgrade.

See ``docs/client.md``.
"""
