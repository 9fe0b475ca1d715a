"""Who is measuring what: claims that keep processes sharing one log off each other's schedules.

Before a tuner measures a batch it claims the batch's schedules in the store
(`RecordStore.claim`): a schedule already measured, or claimed by another live process, is not
its to measure. Committing the measured records drops their claims in the same transaction;
a tuner that stops releases the rest. A process that dies cannot release anything, so a claim
also lapses:
- at once, when its owner ran on this machine and is gone: the owner names the boot (Linux's
  boot_id), the process id and the process's start time, so a reused pid is another owner;
- otherwise when its lease runs out (another machine's process, sharing a PostgreSQL store,
  cannot be looked up from here).
"""

from __future__ import annotations

import functools
import os
import socket
from pathlib import Path

_BOOT_ID = Path("/proc/sys/kernel/random/boot_id")


@functools.cache
def _boot_id() -> str:
    try:
        return _BOOT_ID.read_text().strip()
    except OSError:  # not Linux: fall back to the host name (a lease still ends a claim)
        return socket.gethostname()


def _start_time(pid: int) -> str | None:
    """The process's start time in clock ticks since boot (field 22 of /proc/PID/stat), or
    None when there is no such process."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return stat.rsplit(")", 1)[1].split()[19]  # after "(comm)", which may hold spaces


def owner_key(pid: int | None = None) -> str:
    """The claim owner that this process (or process `pid` on this machine) is."""
    pid = os.getpid() if pid is None else pid
    return f"{_boot_id()}/{pid}/{_start_time(pid) or '?'}"


def owner_is_gone(key: str) -> bool:
    """Whether the owner is known to have ended: it ran on this boot of this machine and
    no process with its id and start time exists. False when it cannot be known here."""
    boot, _, rest = key.partition("/")
    pid, _, started = rest.partition("/")
    if boot != _boot_id() or not pid.isdigit():
        return False
    return _start_time(int(pid)) != started
