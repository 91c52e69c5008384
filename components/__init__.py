"""KFP v2 components: thin wrappers that plumb arguments into the stage packages.

``build_components(image)`` turns the plain functions in :mod:`components.ops` into
``@dsl.component`` objects running on the one component image.
"""

import core  # noqa: F401 (sets the TF environment before anything imports TensorFlow)

from components.factory import Components, build_components

__all__ = ["Components", "build_components"]
