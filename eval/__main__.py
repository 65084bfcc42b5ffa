raise SystemExit("python -m eval: the evaluation suite is not built yet (see the project issues).")
