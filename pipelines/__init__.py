"""Apache Beam glue over featurelib's shard tasks (no computation lives here)."""

import logging as _logging

# Beam warns at import, on the root logger, that optional Google Cloud clients are missing:
# irrelevant to every runner featurelib documents, and printed on every run. Set here, before
# any module of this package imports apache_beam.
_logging.getLogger().addFilter(lambda record: "apitools not found" not in record.getMessage())
