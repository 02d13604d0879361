"""The pace of live speech frames (lipsync/server/realtime/pacing.py), on explicit clocks:
no frame leaves earlier than the lead before its time, none is held once it is due (late
ones catch up; a microphone's are never held, however slow a render was), replies play
back to back, an interrupt starts afresh."""

from __future__ import annotations

import pytest

from lipsync.server.realtime.pacing import Pacer

PERIOD = 0.04  # 25 fps
LEAD = 0.2


def send_all(
    pacer: Pacer, utterance: int, ready: list[float], received: list[float] | None = None
) -> list[float]:
    """Send times of frames 0.. of `utterance`, each made at `ready[i]` from audio that
    arrived at `received[i]` (default: as it was made), by a writer that sends each as
    soon as it is made and due (in order)."""
    sent, now = [], 0.0
    for index, made in enumerate(ready):
        now = max(now, made)
        arrived = made if received is None else received[index]
        now = max(now, pacer.due(utterance, index * PERIOD, arrived))
        pacer.sent(utterance, index * PERIOD)
        sent.append(now)
    return sent


def test_a_reply_made_at_once_leaves_at_real_time_the_lead_ahead():
    pacer = Pacer(LEAD, PERIOD)
    sent = send_all(pacer, 1, [1.0] * 50)
    lead_frames = round(LEAD / PERIOD)
    assert sent[: lead_frames + 1] == [1.0] * (lead_frames + 1)  # the lead's worth at once
    for index, when in enumerate(sent):
        assert when == pytest.approx(max(1.0, 1.0 + index * PERIOD - LEAD))
    assert pacer.presented_until == pytest.approx(1.0 + 50 * PERIOD)


def test_frames_made_late_leave_at_once_and_the_rest_keep_the_clock():
    pacer = Pacer(LEAD, PERIOD)
    ready = [0.0] * 10 + [2.0] * 10 + [0.0] * 40  # frames 10-19 made 1.6 s late
    sent = send_all(pacer, 1, ready, received=[0.0] * 60)
    assert sent[10:20] == [2.0] * 10
    for index in range(20, 60):
        assert sent[index] == pytest.approx(max(2.0, index * PERIOD - LEAD))


def test_a_microphones_frames_are_never_held_however_slow_a_render_was():
    """Audio arriving in real time; each frame made 50 ms after its audio, but the first
    one 1 s late and another one 1 s late later on: no frame waits for the pace."""
    received = [index * PERIOD + 0.2125 for index in range(100)]
    made = [arrived + 0.05 for arrived in received]
    for slow in (0, 40):
        made[slow] += 1.0
        made[slow:] = [max(when, made[slow]) for when in made[slow:]]  # made in order
    assert send_all(Pacer(LEAD, PERIOD), 1, made, received) == made


def test_the_next_reply_starts_when_the_last_one_ends():
    pacer = Pacer(LEAD, PERIOD)
    first = send_all(pacer, 1, [0.0] * 25)  # presented over [0, 1)
    second = send_all(pacer, 2, [first[-1]] * 5, received=[0.0] * 5)  # sent with the first
    assert second[0] == pytest.approx(1.0 - LEAD)
    assert second[0] - first[-1] == pytest.approx(PERIOD)


def test_after_an_interrupt_the_next_reply_starts_at_once():
    pacer = Pacer(LEAD, PERIOD)
    send_all(pacer, 1, [0.0] * 10)  # presented until 0.4
    pacer.interrupted()
    assert pacer.due(2, 0.0, 0.1) == pytest.approx(0.1 - LEAD)


def test_asap_never_waits():
    pacer = Pacer(None, PERIOD)
    assert send_all(pacer, 1, [0.5] * 30) == [0.5] * 30


def test_a_frame_sent_after_the_interrupt_does_not_hold_the_next_reply():
    """The writer took a frame, the interrupt came while it was being sent: its `sent`
    belongs to the old reply and leaves the new one's clock alone."""
    pacer = Pacer(LEAD, PERIOD)
    assert pacer.due(1, 0.0, 0.0) == -LEAD
    pacer.interrupted()
    pacer.sent(1, 0.5)
    assert pacer.due(2, 0.0, 0.1) == pytest.approx(0.1 - LEAD)


def test_send_times_are_known_before_a_clock_starts():
    """`send_time` starts no clock: an utterance not started yet is placed where `due`
    would start it (its anchor, or after the speech sent); a frame not paced is due."""
    pacer = Pacer(LEAD, PERIOD)
    assert pacer.send_time(1, 2.0, 1.0) == pytest.approx(2.8)
    assert pacer.due(1, 0.0, 1.0) == pytest.approx(0.8)  # now started at 1.0
    assert pacer.send_time(1, 2.0, 5.0) == pytest.approx(2.8)  # its clock, not the anchor
    pacer.sent(1, 1.0)  # presented until 2.04
    assert pacer.send_time(2, 0.0, 1.5) == pytest.approx(2.04 - LEAD)
    assert pacer.send_time(1, None, 1.0) == float("-inf")
    assert Pacer(None, PERIOD).send_time(1, 2.0, 0.0) == float("-inf")


def test_idle_frames_wait_for_the_speech_sent_and_unpace_sends_the_rest():
    """The idle loop's rule (a frame period after the last frame sent) puts the first idle
    frame where the paced speech ends, less the lead: at 1.0 - LEAD here."""
    pacer = Pacer(LEAD, PERIOD)
    sent = send_all(pacer, 1, [0.0] * 25)  # presented until 1.0
    assert sent[-1] + PERIOD == pytest.approx(1.0 - LEAD)
    assert pacer.presented_until == pytest.approx(1.0)
    pacer.unpace()
    assert pacer.due(1, 10.0, 0.0) == float("-inf")
