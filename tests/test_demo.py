"""The README's main command runs offline and prints both loss curves."""

import jax

from velojax import demo


@jax.numpy_dtype_promotion("standard")  # optax.adam's bias correction mixes int32 and float
def test_demo_runs_offline(capsys):
    demo.main(["--steps", "30"])
    out = capsys.readouterr().out
    assert "hand-designed meta-parameters instead" in out  # offline: no pretrained weights
    rows = [line.split() for line in out.splitlines() if line.strip() and line.split()[0].isdigit()]
    assert [int(r[0]) for r in rows][0] == 0 and int(rows[-1][0]) == 29
    first, last = rows[0], rows[-1]
    assert float(last[1]) < float(first[1]) and float(last[2]) < float(first[2])  # both optimizers learn
