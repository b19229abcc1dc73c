"""hjax.io: results files (atomic JSONL, summary tables), saved params and figures."""
