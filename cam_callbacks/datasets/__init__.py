"""Generated image data with known object masks: shapes on textured backgrounds, and benchmark scenarios
(object sizes, several objects, shortcut cues correlated with the label). No downloads."""

from cam_callbacks.datasets.scenarios import (
    SCENARIOS,
    ScenarioBatch,
    ScenarioDataset,
    make_scenario,
    patch_mask,
)
from cam_callbacks.datasets.shapes import (
    SHAPE_NAMES,
    SHAPES_MEAN,
    SHAPES_STD,
    ShapesBatch,
    ShapesDataset,
    make_shapes,
    normalize,
    unnormalize,
)

__all__ = [
    "SCENARIOS",
    "SHAPE_NAMES",
    "SHAPES_MEAN",
    "SHAPES_STD",
    "ScenarioBatch",
    "ScenarioDataset",
    "ShapesBatch",
    "ShapesDataset",
    "make_scenario",
    "make_shapes",
    "normalize",
    "patch_mask",
    "unnormalize",
]
