"""Every error the service raises on purpose derives from one root."""

from __future__ import annotations

import pytest

from streamer.config import ConfigError
from streamer.errors import StreamerError
from streamer.mseed import IngestError, RecordDecodeError
from streamer.replay import ReplayError
from streamer.seedlink_state import SeedLinkStateError
from streamer.stitch import StitchError
from streamer.worker import WorkerError


@pytest.mark.parametrize(
    "cls", [ConfigError, IngestError, RecordDecodeError, ReplayError, SeedLinkStateError, StitchError, WorkerError]
)
def test_error_derives_from_the_root(cls: type[Exception]) -> None:
    assert issubclass(cls, StreamerError)


def test_stitch_error_is_still_a_value_error() -> None:
    with pytest.raises(ValueError):
        raise StitchError("bad window")
