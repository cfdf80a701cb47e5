"""Built-in example models (mlp, cnn, text, null) with seeded weights, no download.

:func:`export_examples` writes them as a model repository; :func:`reference_outputs`
computes their expected outputs in-process for tests.
"""

from batchwire.examples.export import export_example, export_examples
from batchwire.examples.models import EXAMPLE_NAMES, EXAMPLES, Example, build_model, config_text
from batchwire.examples.reference import reference_outputs, sample_inputs

__all__ = [
    "EXAMPLES",
    "EXAMPLE_NAMES",
    "Example",
    "build_model",
    "config_text",
    "export_example",
    "export_examples",
    "reference_outputs",
    "sample_inputs",
]
