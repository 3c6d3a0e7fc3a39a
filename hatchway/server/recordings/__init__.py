"""Session recordings: the agent's log stream kept, rendered and delivered."""
