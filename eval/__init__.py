"""eval: the evaluation suite; not built yet (see the project issues)."""
