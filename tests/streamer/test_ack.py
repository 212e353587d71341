"""The acknowledgement rule: which windows are done, and the SeedLink key safe times."""

from __future__ import annotations

from streamer.ack import AckBook, station_key
from streamer.records import NS_PER_S

from service_helpers import window

# ---------------------------------------------------------------------------------------- AckBook
def test_station_key():
    assert station_key("NC.CMB.00") == "NC_CMB"
    assert station_key("XX.DEM01.") == "XX_DEM01"


def test_safe_time_is_start_of_oldest_unpublished_window():
    book = AckBook()
    ws = [window(k) for k in range(4)]
    book.add(ws)
    assert book.safe_ns("XX.STA.") == ws[0].start_ns
    # outputs before the end of window 1 published: windows 0 and 1 done
    book.published_through("XX.STA.", ws[1].end_ns)
    assert book.safe_ns("XX.STA.") == ws[2].start_ns
    # shed windows no longer hold the safe time back
    book.drop([ws[2]])
    assert book.safe_ns("XX.STA.") == ws[3].start_ns
    # a flush publishes everything of the windows before the given time
    book.published_through("XX.STA.", ws[3].start_ns + 10 * NS_PER_S, flushed=True)
    assert book.safe_ns("XX.STA.") == ws[3].start_ns + 10 * NS_PER_S
    assert book.safe_ns("XX.OTHER.") is None


def test_safe_by_key_takes_the_minimum_over_location_codes():
    book = AckBook()
    book.add([window(3, "XX.STA.00"), window(1, "XX.STA.10"), window(0, "XX.B.")])
    safe = book.safe_by_key(["XX.STA.00", "XX.STA.10", "XX.B.", "XX.NONE."])
    assert safe == {"XX_STA": window(1).start_ns, "XX_B": window(0).start_ns}


def test_state_of_a_station_waits_for_every_location_code():
    """Broadband .00 and strong-motion .10 at one NET_STA: a marker naming only .00 must not move the
    SeedLink state past .10's pending windows or its data not yet cut into windows."""
    book = AckBook()
    b00 = [window(k, "XX.STA.00") for k in range(3)]
    book.add(b00)
    book.add([window(0, "XX.STA.10")])
    book.published_through("XX.STA.00", b00[2].end_ns)
    assert book.safe_by_key(["XX.STA.00"]) == {"XX_STA": window(0).start_ns}  # .10's window 0 is pending
    book.published_through("XX.STA.10", window(0).end_ns)
    # .10 has data buffered from 5 s on that no window holds yet
    uncut = {"XX.STA.10": window(0).start_ns + 5 * NS_PER_S, "XX.STA.00": window(3).start_ns}
    assert book.safe_by_key(["XX.STA.00"], uncut) == {"XX_STA": window(0).start_ns + 5 * NS_PER_S}
    assert book.safe_by_key(["XX.OTHER.00"], uncut) == {}


def test_a_location_that_stopped_sending_does_not_freeze_the_station():
    book = AckBook()
    book.add([window(0, "XX.STA.10")])
    book.published_through("XX.STA.10", window(0).end_ns)  # .10 then retired (evicted by the ingestor)
    uncut = {"XX.STA.00": window(40).start_ns}
    assert book.safe_by_key(["XX.STA.00"], uncut) == {"XX_STA": window(40).start_ns}


def test_a_lost_output_holds_the_state_back():
    book = AckBook()
    ws = [window(k) for k in range(3)]
    book.add(ws)
    book.lost("XX.STA.", ws[1].start_ns)  # dropped from a full backlog
    book.published_through("XX.STA.", ws[2].end_ns)
    assert book.safe_ns("XX.STA.") == ws[1].start_ns
    assert book.safe_by_key(["XX.STA."], {"XX.STA.": ws[2].end_ns}) == {"XX_STA": ws[1].start_ns}
