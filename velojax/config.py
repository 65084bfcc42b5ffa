"""VeLO's hyperparameters: the architecture of the learned optimizer, not its weights."""

from __future__ import annotations

import dataclasses

# The per-parameter MLP reads 14 groups of input channels, always in this order
# (the official checkpoint names their first-layer weights w0__0 .. w0__13).
MLP_INPUT_GROUPS = (
    "g",  # clipped gradient
    "clipped_g",  # clip(g, -0.1, 0.1)
    "p",  # parameter value
    "m",  # momentum EMAs, one channel per momentum decay
    "rms",  # EMA of g^2
    "m_rsqrt_rms",  # m * rsqrt(rms + 1e-6)
    "rsqrt_rms",  # rsqrt(rms + 1e-6)
    "fac_g",  # Adafactor-normalised gradient, one channel per Adafactor decay
    "g_rsqrt_rms",  # g * rsqrt(rms + 1e-6)
    "fac_row",  # row second moment broadcast to the tensor (v_diag if unfactored)
    "fac_col",  # column second moment broadcast to the tensor (v_diag if unfactored)
    "rsqrt_fac_row",  # rsqrt(fac_row + 1e-8)
    "rsqrt_fac_col",  # rsqrt(fac_col + 1e-8)
    "fac_m",  # momentum times the Adafactor factors
)

# Fixed by the reference: 9 time features, 9 loss features, 5 rank one-hot slots.
NUM_TIME_FEATURES = 9
NUM_LOSS_FEATURES = 9
NUM_RANK_FEATURES = 5


@dataclasses.dataclass(frozen=True)
class VeLOConfig:
    """Architecture of a VeLO-style learned optimizer (`HyperV2` in the reference).

    The defaults are VeLO's: a 512-wide per-tensor LSTM writing the weights of a
    30 -> 4 -> 4 -> 3 per-parameter MLP as a mixture of a bank of 256 weight sets.

    Attributes:
      lstm_hidden_size: width of the per-tensor LSTM and its mixing layers.
      param_inits: size of the bank of per-parameter MLP weight sets.
      ff_hidden_size: hidden width of the per-parameter MLP.
      ff_hidden_layers: number of hidden layers of the per-parameter MLP.
      momentum_decays: decays of the momentum EMAs.
      rms_decays: decay of the EMA of g^2 (exactly one, as in the reference).
      adafactor_decays: decays of the factored second-moment EMAs (as many as
        momentum decays: the factored momentum feature multiplies them).
      exp_mult: the magnitude output is applied as exp(exp_mult * o_1).
      step_mult: global step scale.
      use_bugged_loss_features: size the loss EMAs for 10 steps whatever
        `num_steps` is (old "no_config" checkpoints; False for VeLO).
      use_bugged_next_lstm_state: never advance the LSTM state (old
        "no_config" checkpoints; False for VeLO).
    """

    lstm_hidden_size: int = 512
    param_inits: int = 256
    ff_hidden_size: int = 4
    ff_hidden_layers: int = 2
    momentum_decays: tuple[float, ...] = (0.9, 0.99, 0.999)
    rms_decays: tuple[float, ...] = (0.999,)
    adafactor_decays: tuple[float, ...] = (0.9, 0.99, 0.999)
    exp_mult: float = 0.001
    step_mult: float = 0.001
    use_bugged_loss_features: bool = False
    use_bugged_next_lstm_state: bool = False

    def __post_init__(self):
        for name in ("momentum_decays", "rms_decays", "adafactor_decays"):
            value = tuple(float(d) for d in getattr(self, name))
            object.__setattr__(self, name, value)  # lists from users become hashable tuples
            if not value or not all(0.0 <= d < 1.0 for d in value):
                raise ValueError(f"VeLOConfig.{name} must be a non-empty sequence of decays in [0, 1), got {value}.")
        for name in ("lstm_hidden_size", "param_inits", "ff_hidden_size", "ff_hidden_layers"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"VeLOConfig.{name} must be a positive int, got {value!r}.")
        if len(self.rms_decays) != 1:
            raise ValueError(
                f"VeLOConfig.rms_decays must hold exactly one decay (the reference's var_rms feature "
                f"broadcasts it against the momentum decays), got {self.rms_decays}."
            )
        if len(self.adafactor_decays) != len(self.momentum_decays):
            raise ValueError(
                "VeLOConfig.adafactor_decays and momentum_decays must have the same length (the factored "
                f"momentum feature multiplies them), got {self.adafactor_decays} and {self.momentum_decays}."
            )

    @classmethod
    def small(cls, lstm_hidden_size: int = 32, param_inits: int = 8, **overrides) -> VeLOConfig:
        """A narrow VeLO for meta-training on a CPU (default 32-wide LSTM, bank of 8)."""
        return cls(lstm_hidden_size=lstm_hidden_size, param_inits=param_inits, **overrides)

    @property
    def num_momentum(self) -> int:
        return len(self.momentum_decays)

    @property
    def num_adafactor(self) -> int:
        return len(self.adafactor_decays)

    @property
    def mlp_group_channels(self) -> tuple[int, ...]:
        """Channels of each group in `MLP_INPUT_GROUPS` (VeLO: 1,1,1,3,1,3,1,3,1,3,3,3,3,3 = 30)."""
        k_m, k_f = self.num_momentum, self.num_adafactor
        per_group = {
            "g": 1, "clipped_g": 1, "p": 1, "m": k_m, "rms": 1, "m_rsqrt_rms": k_m, "rsqrt_rms": 1,
            "fac_g": k_f, "g_rsqrt_rms": 1, "fac_row": k_f, "fac_col": k_f, "rsqrt_fac_row": k_f,
            "rsqrt_fac_col": k_f, "fac_m": k_m,
        }  # fmt: skip
        return tuple(per_group[g] for g in MLP_INPUT_GROUPS)

    @property
    def num_mlp_inputs(self) -> int:
        return sum(self.mlp_group_channels)

    @property
    def num_lstm_inputs(self) -> int:
        """Per-tensor LSTM input width (VeLO: 9 + 9 + 1 + 5 + 3 + 3 = 30)."""
        # fraction_left, loss_features, mean_rms, rank, var_m, var_rms (3-wide: reference bug, kept)
        return NUM_TIME_FEATURES + NUM_LOSS_FEATURES + 1 + NUM_RANK_FEATURES + 2 * self.num_momentum


VELO = VeLOConfig()
"""VeLO's own configuration (the default everywhere)."""
