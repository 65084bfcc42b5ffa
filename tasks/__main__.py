raise SystemExit("python -m tasks: the task-family generator is not built yet (see the project issues).")
