"""eval: the evaluation suite, LR-tuned Adam baselines and the speedup-over-Adam metric.

    python -m eval --optimizer velo --weights PATH --suite velodrome83 --out DIR
    python -m eval demo                      # meta-train tiny_cpu, evaluate on `tiny`, report

    from eval import baselines, envelope, suites
    env = baselines.load_reference("speedup_over_adam.npz")["ImageMLP_FashionMnist8_Relu32"].envelope
    envelope.speedup(env, final_loss=0.45, steps=10_000)

Modules: `suites` (manifests), `envelope` (the metric), `stats` (IQM, bootstrap),
`training` (curves over LR grids × seeds), `optimizers`, `baselines`, `runner`, `report`,
`cli`, `demo`. See docs/eval.md.
"""
