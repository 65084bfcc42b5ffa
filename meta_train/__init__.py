"""meta_train: ES meta-training; not built yet (see the project issues)."""
