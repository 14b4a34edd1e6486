"""The mining job: Ray actors over whole archives, Parquet out, resume."""
