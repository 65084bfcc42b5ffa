"""tasks: the task-family generator; not built yet (see the project issues)."""
