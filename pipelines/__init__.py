"""Pipeline definition, compile, local run, and the ``twotower`` CLI."""
