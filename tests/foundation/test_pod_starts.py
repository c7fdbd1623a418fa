"""Pulls yield to pod starts: the gateway's count of pod starts in flight, as imaged and storaged read it."""

from __future__ import annotations

import asyncio
import os
import struct
import subprocess
import threading
import time

from shared.pod_starts import PodStarts, PodStartSignal, pod_starts_path


def wait_for(condition, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.005)


def test_readers_see_pod_starts_in_flight_and_their_end(tmp_path):
    gateway = PodStarts(str(tmp_path))
    pulls = PodStartSignal(str(tmp_path), limit_ms=200)
    try:
        assert not pulls.busy()
        with gateway.starting():
            assert pulls.busy()
            with gateway.starting():  # two calls at once: busy until both end
                pass
            assert pulls.busy()
        assert not pulls.busy()
    finally:
        gateway.close()


def test_a_pause_lasts_until_the_pod_start_ends(tmp_path):
    gateway = PodStarts(str(tmp_path))
    pulls = PodStartSignal(str(tmp_path), limit_ms=10_000)
    paused = threading.Event()
    resumed = threading.Event()

    def unpack_step() -> None:
        paused.set()
        pulls.pause()
        resumed.set()

    try:
        with gateway.starting():
            worker = threading.Thread(target=unpack_step)
            worker.start()
            paused.wait(10)
            assert not resumed.wait(0.05)  # still paused while the pod starts
        assert resumed.wait(10)
        worker.join(10)
    finally:
        gateway.close()


def test_a_pause_never_lasts_longer_than_its_limit(tmp_path):
    gateway = PodStarts(str(tmp_path))
    pulls = PodStartSignal(str(tmp_path), limit_ms=50)
    try:
        with gateway.starting():
            started = time.monotonic()
            pulls.pause()
            asyncio.run(pulls.pause_async())
            assert 0.09 <= time.monotonic() - started < 5
    finally:
        gateway.close()


def test_a_count_left_by_a_gateway_that_died_mid_call_is_ignored(tmp_path):
    gateway = PodStarts(str(tmp_path))
    gateway.close()
    dead = subprocess.Popen(["true"])
    dead.wait()
    # What a gateway killed during a RunPodSandbox leaves: a count of 1, last changed long ago.
    long_ago = time.monotonic_ns() - 60_000_000_000
    pod_starts_path(str(tmp_path)).write_bytes(struct.pack("qqq", 1, long_ago, dead.pid))
    assert not PodStartSignal(str(tmp_path), limit_ms=200).busy()


def test_a_long_pod_start_of_a_live_gateway_still_holds_pulls(tmp_path):
    gateway = PodStarts(str(tmp_path))
    gateway.close()
    long_ago = time.monotonic_ns() - 60_000_000_000
    pod_starts_path(str(tmp_path)).write_bytes(struct.pack("qqq", 1, long_ago, os.getpid()))
    assert PodStartSignal(str(tmp_path), limit_ms=200).busy()


def test_readers_follow_a_gateway_that_starts_after_them_and_restarts(tmp_path):
    pulls = PodStartSignal(str(tmp_path), limit_ms=200)
    assert not pulls.busy()  # no gateway yet: nothing to yield to
    first = PodStarts(str(tmp_path))
    with first.starting():
        wait_for(pulls.busy)  # found once the reader looks again
    first.close()
    second = PodStarts(str(tmp_path))  # a restarted gateway keeps the file the readers have mapped
    try:
        with second.starting():
            assert pulls.busy()
        assert not pulls.busy()
    finally:
        second.close()


def test_yielding_turned_off_never_pauses(tmp_path):
    gateway = PodStarts(str(tmp_path))
    pulls = PodStartSignal(str(tmp_path), limit_ms=0)
    try:
        with gateway.starting():
            assert not pulls.busy()
            started = time.monotonic()
            pulls.pause()
            assert time.monotonic() - started < 0.05
    finally:
        gateway.close()


def test_a_gateway_without_its_run_dir_still_serves(tmp_path):
    gateway = PodStarts(str(tmp_path / "missing"))
    with gateway.starting():
        pass
    gateway.close()
