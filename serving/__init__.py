"""Query serving: load a published version and answer retrieval requests."""
