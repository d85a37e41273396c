"""A plugin method for the tests: one registry entry (this file) + its model file (tiny_model.py).

Loaded with ``MORPHOBENCH_PLUGINS=tiny_method`` and ``PYTHONPATH=tests/plugins`` (or imported by
the tests); it shows that a new method needs nothing else to reach the DAG, the schema and every
evaluation.
"""

from morphobench.methods import Method, register

register(Method(
    "tiny_ae", "test", input="cell128", level="cell", trains=True, model="tiny_model:tiny_ae",
    split="treatment_folds",
    defaults={"epochs": 2, "batch_size": 16, "lr": 3e-3, "dim": 8, "width": 8},
    description="test plugin: a tiny convolutional autoencoder", paper="tests"))
