"""Claim files: which process owns a run, and whether that process is still the one that claimed it.

A claim is created with ``O_EXCL``, so of two processes claiming one run exactly one wins. It records the
owner token, the host, the pid *and the identity of that process*: the kernel's boot id and the process's
start time (``/proc/<pid>/stat``, clock ticks since boot). A pid alone is not enough: after a reboot or a
container restart the same number may belong to an unrelated live process, which would hold the run forever.
On the claim's own host, a claim is stale when its process is gone, when the machine has booted since, or
when the pid now belongs to a process started at another time. A claim from another host is judged by its
heartbeat (the owner touches the file every 30 s): stale after ``STALE_AFTER_S`` without one.
"""

from __future__ import annotations

import json
import os
import socket
import time
from pathlib import Path

from transfer.experiment.atomic import write_json_atomic

STALE_AFTER_S = 15 * 60  # a claim from another host with no heartbeat for this long is taken as dead
HALF_WRITTEN_S = 60  # an unreadable claim younger than this is being written right now


def boot_id() -> str | None:
    """This boot of the kernel (Linux); None where the system does not say."""
    try:
        return Path("/proc/sys/kernel/random/boot_id").read_text().strip() or None
    except OSError:
        return None


def process_start(pid: int) -> int | None:
    """When process ``pid`` started, in clock ticks since boot (Linux); None if unknown or no such process."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # the command name (field 2) may hold spaces and parentheses: the fields after it follow the last ')'
    fields = stat[stat.rfind(")") + 2:].split()
    try:
        return int(fields[19])  # field 22 of the whole line
    except (IndexError, ValueError):
        return None


def identity(pid: int | None = None) -> dict:
    """The claim fields naming a process: pid, host, boot id and start time."""
    pid = os.getpid() if pid is None else pid
    return {"pid": pid, "host": socket.gethostname(), "boot_id": boot_id(), "pid_start": process_start(pid)}


def _pid_alive(pid: int) -> bool:
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def same_process_alive(info: dict) -> bool:
    """Whether the process a claim on this host names is alive and is the very process that wrote it."""
    recorded_boot, current_boot = info.get("boot_id"), boot_id()
    if recorded_boot and current_boot and recorded_boot != current_boot:
        return False  # booted since: nothing of the old boot runs
    try:
        pid = int(info.get("pid", -1))
    except (TypeError, ValueError):
        return False
    if not _pid_alive(pid):
        return False
    recorded_start = info.get("pid_start")
    if recorded_start is None:
        return True  # a claim written without the start time (older code, or no /proc): the pid is all we have
    current_start = process_start(pid)
    return current_start is None or int(recorded_start) == current_start


def read(claim: Path) -> dict | None:
    try:
        with open(claim, encoding="utf-8") as handle:
            info = json.load(handle)
    except (OSError, ValueError):
        return None
    return info if isinstance(info, dict) else None


def is_stale(claim: Path) -> bool:
    info = read(claim)
    try:
        age = time.time() - claim.stat().st_mtime
    except FileNotFoundError:
        return True
    if info is None:
        return age > HALF_WRITTEN_S  # being written right now, or left half-written by a crash: judge by age
    if info.get("host") == socket.gethostname():
        return not same_process_alive(info)
    return age > STALE_AFTER_S


def _break(claim: Path) -> None:
    # Rename first so two processes breaking the same stale claim cannot both delete a fresh one.
    grave = claim.with_name(f"{claim.name}.stale.{os.getpid()}.{time.monotonic_ns()}")
    try:
        os.rename(claim, grave)
        grave.unlink(missing_ok=True)
    except FileNotFoundError:
        pass


def acquire(claim: Path, owner: str) -> bool:
    """Create ``claim`` for ``owner`` (taking over a stale one); False if a live process holds it."""
    for _ in range(2):
        try:
            fd = os.open(claim, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            if not is_stale(claim):
                return False
            _break(claim)
            continue
        with os.fdopen(fd, "w") as handle:
            json.dump({"owner": owner, **identity(), "time": time.time()}, handle)
            handle.flush()
            os.fsync(handle.fileno())
        return True
    return False


def adopt(claim: Path, owner: str) -> bool:
    """Rewrite ``owner``'s claim to name this process; False if the claim is missing or someone else's."""
    info = read(claim)
    if info is None or info.get("owner") != owner:
        return False
    info.update(identity(), time=time.time())
    write_json_atomic(claim, info)
    return True


def release(claim: Path, owner: str | None = None) -> None:
    """Drop the claim; with ``owner``, only if that owner still holds it."""
    if owner is not None:
        info = read(claim)
        if info is not None and info.get("owner") != owner:
            return
    claim.unlink(missing_ok=True)


def heartbeat(claim: Path) -> None:
    if claim.exists():
        os.utime(claim)


def describe(claim: Path) -> str:
    """Who holds a claim, in words: owner, pid, host, how old its heartbeat is, and whether we judge it alive."""
    info = read(claim)
    if info is None:
        return "nobody (no readable claim)" if not claim.exists() else "an unreadable claim (being written?)"
    try:
        beat = f"{time.time() - claim.stat().st_mtime:.0f} s ago"
    except FileNotFoundError:
        return "nobody (the claim was just released)"
    local = info.get("host") == socket.gethostname()
    judged = ("its process is alive" if same_process_alive(info) else "its process is gone") if local else \
        f"another host, taken as dead after {STALE_AFTER_S} s without a heartbeat"
    return (f"{info.get('owner', '?')} (pid {info.get('pid', '?')} on {info.get('host', '?')}, "
            f"last heartbeat {beat}; {judged})")
