"""Speed benchmarks of the project's hot paths (``python -m perf.speed --help``)."""
