"""coldstream's streaming service: SeedLink ingest, buffers, windows, worker, Redis, metrics, CLI."""

__version__ = "0.1.0"
