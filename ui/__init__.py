"""``twotower ui``: a local web page over run folders and a version store (no cluster needed).

Modules, one job each: :mod:`ui.runs` reads run folders, :mod:`ui.versions` reads and
rolls back the version store, :mod:`ui.query` caches loaded retrievers, :mod:`ui.page`
renders HTML, :mod:`ui.server` is the stdlib HTTP server, :mod:`ui.cli` the command.
"""

import core  # noqa: F401 (sets the TF environment before anything imports TensorFlow)
