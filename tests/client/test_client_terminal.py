"""Terminal pieces: the ``~`` escape state machine, raw mode and its restore, window size."""

from __future__ import annotations

import fcntl
import os
import pty
import struct
import termios
from collections.abc import Iterator

import pytest

from hatchway.client.terminal import DEFAULT_SIZE, Escape, EscapeFilter, RawMode, window_size


def feed_all(f: EscapeFilter, *chunks: bytes) -> tuple[bytes, list[Escape]]:
    out, actions = b"", []
    for chunk in chunks:
        data, action = f.feed(chunk)
        out += data
        actions.append(action)
    return out, actions


def test_tilde_dot_at_start_terminates() -> None:
    assert EscapeFilter().feed(b"~.") == (b"", Escape.TERMINATE)


def test_tilde_dot_after_enter_terminates_and_sends_what_came_before() -> None:
    assert EscapeFilter().feed(b"ls\r~.rest") == (b"ls\r", Escape.TERMINATE)
    assert EscapeFilter().feed(b"ls\n~.") == (b"ls\n", Escape.TERMINATE)


def test_tilde_dot_across_reads() -> None:
    f = EscapeFilter()
    assert f.feed(b"x") == (b"x", Escape.NONE)
    assert f.feed(b"\r") == (b"\r", Escape.NONE)
    assert f.feed(b"~") == (b"", Escape.NONE)  # held back, waiting for the command
    assert f.feed(b".") == (b"", Escape.TERMINATE)


def test_tilde_mid_line_is_plain() -> None:
    assert EscapeFilter().feed(b"a~.") == (b"a~.", Escape.NONE)
    assert EscapeFilter().feed(b"cd ~/x\r") == (b"cd ~/x\r", Escape.NONE)


def test_double_tilde_sends_one() -> None:
    f = EscapeFilter()
    assert feed_all(f, b"\r", b"~", b"~", b".") == (b"\r~.", [Escape.NONE] * 4)


def test_tilde_then_other_sends_both() -> None:
    assert EscapeFilter().feed(b"\r~x") == (b"\r~x", Escape.NONE)
    f = EscapeFilter()
    assert f.feed(b"~\r") == (b"~\r", Escape.NONE)
    assert f.feed(b"~.") == (b"", Escape.TERMINATE)  # the \r counted as a newline


def test_help() -> None:
    f = EscapeFilter()
    assert f.feed(b"~?") == (b"", Escape.HELP)
    assert f.feed(b"~.") == (b"", Escape.TERMINATE)  # still at line start after help


def test_control_bytes_pass_through() -> None:
    data = b"\x03\x1a\x04\x1c"
    assert EscapeFilter().feed(data) == (data, Escape.NONE)


def test_disabled_filter_passes_everything() -> None:
    assert EscapeFilter(enabled=False).feed(b"\r~.") == (b"\r~.", Escape.NONE)


@pytest.fixture
def tty_pair() -> Iterator[tuple[int, int]]:
    master, slave = pty.openpty()
    yield master, slave
    os.close(master)
    os.close(slave)


def test_raw_mode_and_restore(tty_pair: tuple[int, int]) -> None:
    _, slave = tty_pair
    before = termios.tcgetattr(slave)
    assert before[3] & termios.ICANON and before[3] & termios.ECHO
    raw = RawMode(slave)
    with pytest.raises(RuntimeError), raw:
        now = termios.tcgetattr(slave)
        assert not now[3] & (termios.ICANON | termios.ECHO | termios.ISIG)
        assert not now[0] & termios.ICRNL
        raise RuntimeError("boom")  # restored on the way out of an exception too
    assert termios.tcgetattr(slave) == before
    raw.restore()  # idempotent
    assert termios.tcgetattr(slave) == before


def test_raw_mode_on_a_pipe_is_a_no_op() -> None:
    r, w = os.pipe()
    try:
        raw = RawMode(r)
        assert raw.enter() is False
        assert not raw.active
        raw.restore()
    finally:
        os.close(r)
        os.close(w)


def test_window_size(tty_pair: tuple[int, int]) -> None:
    _, slave = tty_pair
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 40, 132, 0, 0))
    assert window_size((slave,)) == (132, 40)
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 0, 0, 0, 0))
    assert window_size((slave,)) is None  # 0x0: the plugin sends nothing
    r, w = os.pipe()
    try:
        assert window_size((r,)) == DEFAULT_SIZE
    finally:
        os.close(r)
        os.close(w)
