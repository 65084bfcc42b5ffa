"""XLA_FLAGS of test processes.

Tests spend most of their time compiling small programs, so LLVM runs at its cheapest
level: the cold suite took 6m52 against 9m35 on a 2-core AMD EPYC. Programs compiled at
different levels may round differently, so a subprocess whose results must equal the
test process's bit for bit gets the same flags."""

COMPILE_FLAGS = "--xla_backend_optimization_level=0"


def xla_flags(devices: int) -> str:
    """XLA_FLAGS for a test process with `devices` forced CPU devices."""
    return f"--xla_force_host_platform_device_count={devices} {COMPILE_FLAGS}"
