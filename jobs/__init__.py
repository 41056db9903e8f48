"""Apache Spark glue over featurelib's shard tasks, and training jobs (no feature computation here)."""
