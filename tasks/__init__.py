"""tasks: the task-family generator for meta-training and evaluating learned optimizers.

    import tasks
    family = tasks.get("ImageMLP_FashionMnist8_Relu32")       # a fixed task
    sampled = tasks.sample_task(jax.random.PRNGKey(0), phase=1)  # VeLO's phase-1 distribution

See `tasks.base` for the interface, `tasks.families` for the ten families,
`tasks.augmentations` for the wrappers, `tasks.cost` and `tasks.phases` for the
size-based curriculum, `tasks.data` for datasets, and docs/tasks.md for deviations from
the reference.
"""

from tasks.base import Task, TaskFamily, train_scan
from tasks.phases import SampledTask, sample_task
from tasks.registry import get, names

__all__ = ["SampledTask", "Task", "TaskFamily", "get", "names", "sample_task", "train_scan"]
