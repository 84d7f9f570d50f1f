"""Ctrl-C and SIGTERM (latentseg.train.interrupt), with real signals sent to this process: the
first asks to stop, a second Ctrl-C aborts, an inner stop tells the enclosing ones."""

from __future__ import annotations

import os
import signal

import pytest

from latentseg.train.interrupt import StopSignal, ignore_interrupts, stop_requested


def test_the_first_signal_asks_to_stop_and_a_second_ctrl_c_aborts():
    before = signal.getsignal(signal.SIGINT)
    with StopSignal() as stop:
        assert not stop() and stop_requested() is None
        os.kill(os.getpid(), signal.SIGTERM)
        assert stop() and stop.received == "SIGTERM" and stop_requested() == "SIGTERM"
        with pytest.raises(KeyboardInterrupt):
            os.kill(os.getpid(), signal.SIGINT)
    assert signal.getsignal(signal.SIGINT) is before  # the host's handlers are back
    assert stop_requested() is None


def test_a_signal_caught_inside_a_trial_stops_the_study_around_it():
    with StopSignal() as study:
        with StopSignal() as trial:
            os.kill(os.getpid(), signal.SIGINT)
            assert trial.received == "SIGINT"
        assert study.received == "SIGINT"
        with StopSignal() as next_trial:  # entered after the signal: already stopped
            assert next_trial()


def test_a_critical_section_ignores_interrupts():
    with StopSignal() as stop:
        with ignore_interrupts():
            os.kill(os.getpid(), signal.SIGTERM)
        assert not stop()
