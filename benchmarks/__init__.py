"""Speed benchmarks of the project's hot paths (``python -m benchmarks.speed --help``)."""
