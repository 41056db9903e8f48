"""Apache Beam glue over featurelib's shard tasks (no computation lives here)."""
