"""The project's benchmarks and scale measurements: not part of the enrich wheel. Run them from the project root,
e.g. `make bench` (`python -m benchmarks.bench`)."""
