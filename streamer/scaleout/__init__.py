"""Scale-out: one ingest process, any number of worker processes, joined by Redis work streams.

``coldstream ingest`` runs the service with a :class:`~streamer.scaleout.sink.RedisSink` (windows to
``{prefix}:windows``, results back from ``{prefix}:results`` through the
:class:`~streamer.scaleout.collector.ResultCollector`); ``coldstream worker`` runs
:class:`~streamer.scaleout.worker.ScaleOutWorker`. Only the service wiring and those two commands
import this package (an import contract enforces it).

Modules: ``codec`` (stream fields of windows and results), ``queue`` (the consumer-group work queue),
``worker``, ``collector``, ``sink``.
"""
