"""Item-embedding batch inference, ScaNN build / evaluate, gate, versioned store and publish."""
