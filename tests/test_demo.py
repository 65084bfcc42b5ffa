"""`python -m velojax` runs offline with the shipped learned optimizer and prints both loss curves."""

import jax

from velojax import demo


@jax.numpy_dtype_promotion("standard")  # optax.adam's bias correction mixes int32 and float
def test_demo_runs_offline_with_the_shipped_weights(capsys):
    demo.main(["--steps", "30", "--pretrained"])
    out = capsys.readouterr().out
    assert "shipped learned optimizer 'small_v1' instead" in out  # offline: no pretrained weights
    assert "learned: small_v1" in out
    rows = [line.split() for line in out.splitlines() if line.strip() and line.split()[0].isdigit()]
    assert [int(r[0]) for r in rows][0] == 0 and int(rows[-1][0]) == 29
    first, last = rows[0], rows[-1]
    assert float(last[1]) < float(first[1]) and float(last[2]) < float(first[2])  # both optimizers learn
