"""The project's top-level production packages."""


#: Every top-level production package (setup.py ships these); each must import ``core`` first.
PACKAGES = ("core", "datagen", "features", "trainer", "evaluation", "indexer", "publishing", "run_records",
            "serving", "reports", "ui", "components", "pipelines")
