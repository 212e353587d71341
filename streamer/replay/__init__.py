"""A SeedLink v3 replay server: serves miniSEED files to SeedLink clients in (scaled) real time.

- :mod:`streamer.replay.records`: the input (miniSEED files as 512-byte records, per-station archives);
- :mod:`streamer.replay.protocol`: SeedLink v3 wire details (selectors, times, sequence numbers, INFO);
- :mod:`streamer.replay.session`: one client connection (commands and the data stream);
- :mod:`streamer.replay.server`: ``ReplayServer`` (the release clock, the ring, INFO) and
  ``ReplayServerThread`` (the server on a background thread). See ``server``'s docstring for the
  commands served and the limitations.
"""

from __future__ import annotations

from streamer.replay.protocol import (
    format_seedlink_time,
    parse_seedlink_time,
    parse_sequence,
    selection_accepts,
    valid_selector,
)
from streamer.replay.records import ReplayError, ReplayRecord, iter_input_files, load_records, shift_record_time
from streamer.replay.server import ReplayServer, ReplayServerThread

__all__ = [
    "ReplayError",
    "ReplayRecord",
    "ReplayServer",
    "ReplayServerThread",
    "format_seedlink_time",
    "iter_input_files",
    "load_records",
    "parse_seedlink_time",
    "parse_sequence",
    "selection_accepts",
    "shift_record_time",
    "valid_selector",
]
