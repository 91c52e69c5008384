"""Feature stages: ``ingest`` (validation, dead letters) and the Beam ``transform``."""
