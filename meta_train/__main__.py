raise SystemExit("python -m meta_train: ES meta-training is not built yet (see the project issues).")
