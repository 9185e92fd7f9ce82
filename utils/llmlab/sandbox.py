"""Run untrusted code (a lab submission, a tool call, generated code) in an isolated process.

    >>> from llmlab import sandbox
    >>> sandbox.run_python("print(6 * 7)").stdout
    b'42\\n'
    >>> with sandbox.Sandbox(limits=sandbox.Limits(memory_mb=4096), hide=["solutions"]) as box:
    ...     worker = box.popen([sys.executable, "-m", "some.worker"], stdin=PIPE, stdout=PIPE)
    ...     ...  # talk to it over its pipes; leaving the block kills all it started

Threat model. The code comes from someone who may want to read what they should not (the
solutions, other students' work, the instructor's keys), change what they should not (their
grade, the course files), reach the network, hog the machine, or outlive the grader. The
kernel is the boundary: there is no system-call filter, so a kernel exploit is out of scope.

On Linux with working user namespaces (``isolation().namespaces`` is True), a launcher (this
file, run with ``python -I -S``) unshares user, mount, PID, network and IPC namespaces, maps
the calling user to uid 65534 inside, and before running the code:

* environment: only PATH (the running Python's bin dir, /usr/local/bin, /usr/bin, /bin),
  LANG and LC_ALL (C.UTF-8), HOME (the work dir), TMPDIR (/tmp), PYTHONDONTWRITEBYTECODE=1,
  PYTHONNOUSERSITE=1 and what the caller passes in ``env``: no secret of the grader's;
* filesystem: every mount is made read-only (``mount_setattr`` with AT_RECURSIVE), except the
  work dir and a private, empty, RAM-backed /tmp, /var/tmp and /dev/shm (each at most
  ``memory_mb``). /run is empty, /dev holds only null, zero, full, random, urandom and the
  NVIDIA devices, /proc shows only the sandbox's processes and is read-only. Each path in
  ``hide``, and each of :data:`SECRET_PATHS` that exists, is covered: a folder by an empty
  read-only tmpfs, a file by /dev/null. Everything keeps its path, so the venv, ``llmlab`` and
  the rest of the repository stay readable where they are;
* privileges: the code has no capabilities (none permitted, an empty bounding set,
  ``no_new_privs``), so it cannot unmount or remount anything; it cannot make a user namespace
  of its own either (their limit is 0 inside), and the kernel would lock the mounts if it did;
* network: a network namespace of its own, with only its own loopback up: a local server
  (a Jupyter kernel) works; the host's 127.0.0.1 and every other address do not;
* processes: the code runs under a small init, PID 1 of its PID namespace, in a session of its
  own (it cannot signal the grader's process group). ``kill()`` kills that init; the kernel
  then kills every process in the namespace, ``setsid()`` or double fork notwithstanding, and
  ``kill()`` returns once they are all gone;
* limits: RLIMIT_CPU (``cpu_s``: SIGXCPU, SIGKILL a second later), RLIMIT_AS (``memory_mb``)
  and RLIMIT_FSIZE (``file_mb``) per process, RLIMIT_CORE 0, and ``processes`` for the whole
  sandbox, threads included: exactly, through RLIMIT_NPROC, which Linux 5.14+ counts per user
  namespace (but never applies to root); and, from Linux 6.14, through the PID namespace's own
  ``pid_max``, set to ``processes`` + 301, which also binds a grader running as root: there
  the sandbox may hold up to ``processes`` + 300 processes and threads.

The launcher's steps: ``unshare(CLONE_NEWUSER | CLONE_NEWNS | CLONE_NEWPID | CLONE_NEWNET |
CLONE_NEWIPC)``; write ``deny`` to /proc/self/setgroups and ``65534 <uid> 1`` to uid_map (and
gid_map); write 0 to /proc/sys/user/max_user_namespaces; bring ``lo`` up; make ``/`` rprivate;
cover the hidden paths; ``mount_setattr("/", AT_RECURSIVE, MOUNT_ATTR_RDONLY)``; mount the
tmpfs's on /dev (bind-mounting the devices into it), /dev/shm, /tmp, /var/tmp and /run;
bind-mount the work dir back at its own path and clear its read-only flag; fork init. Init
sets PR_SET_PDEATHSIG, mounts a fresh /proc, writes its pid_max, makes /proc read-only and
forks the code's process, which sets ``no_new_privs``, drops the bounding set, calls setsid(),
sets the rlimits and exec's argv: uid 65534 exec'ing loses every capability. The launcher
waits outside and exits as the code did (a negative returncode: killed by that signal).

What is NOT isolated, even then: what the calling user may read and did not hide stays
readable (run the grader as an ordinary user: as root, the code reads what root reads, but
for /etc/shadow and the SECRET_PATHS); disk space in the work dir; memory and CPU time summed
over the sandbox's processes; the GPUs; the kernel itself. Files the code leaves in the work
dir are untrusted (a symlink there may point anywhere). If the grader is SIGKILLed, the
sandbox runs on until its code ends (``cpu_s`` bounds that).

Everywhere else -- macOS, Windows, a Linux that forbids user namespaces (many containers;
Ubuntu 24.04 by default for non-root users), kernels before 5.12, or with the environment
variable ``LLMLAB_SANDBOX=off``, which forces this path (for testing) -- the code runs as a
plain subprocess with the same scrubbed environment, a fresh work dir as its current
directory, its own session, RLIMIT_CPU, RLIMIT_FSIZE and RLIMIT_CORE (not on Windows),
RLIMIT_AS and ``no_new_privs`` (Linux only); ``kill()`` kills its process group, which a
``setsid()`` escapes. There is NO filesystem, network or process isolation and ``hide`` does
nothing: ``Sandbox`` says so in a RuntimeWarning or, with ``require_isolation=True``, refuses
with a RuntimeError. ``isolation().describe()`` says which case applies, and why.

Costs, measured on a 2-core VM: a sandbox adds 65-90 ms to a process start (``python -c
pass``: 15 ms plain); the namespaces themselves take 10-20 ms of it, the launcher's Python
the rest. ``memory_mb`` limits address space, not memory in use: ``import torch`` and a small
CPU matmul need 0.7 GB of it (1.9 GB with 16 threads, 2.8 GB with 64), so the default 8192
leaves room. CUDA reserves far more address space than it uses: give GPU work
``memory_mb=None``.
"""

from __future__ import annotations

import ctypes
import dataclasses
import errno
import functools
import itertools
import json
import math
import os
import shutil
import signal
import stat
import struct
import subprocess
import sys
import tempfile
import time
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NoReturn

ENV_SWITCH = "LLMLAB_SANDBOX"  # "off": no namespaces, even where they work

SECRET_PATHS = (
    "~/.ssh",
    "~/.gnupg",
    "~/.aws",
    "~/.azure",
    "~/.kube",
    "~/.docker",
    "~/.netrc",
    "~/.pypirc",
    "~/.git-credentials",
    "~/.config/gh",
    "~/.config/gcloud",
    "~/.cache/huggingface/token",
    "~/.huggingface/token",
    "/etc/shadow",
    "/etc/gshadow",
    "/etc/ssh",
)
"""Always hidden inside namespaces, where they exist (``~`` is the calling user's home)."""

_INNER_ID = 65534  # the code's uid and gid inside its user namespace ("nobody")
_NPROC_PER_NAMESPACE = (5, 14)  # kernel from which RLIMIT_NPROC counts per user namespace
_PID_MAX_PER_NAMESPACE = (6, 14)  # kernel from which each PID namespace has its own pid_max
_RESERVED_PIDS = 300  # pids the kernel skips when it wraps around (also pid_max's minimum - 1)
_RESERVED_KWARGS = frozenset(
    {
        "args",
        "cwd",
        "env",
        "executable",
        "shell",
        "preexec_fn",
        "start_new_session",
        "process_group",
        "pass_fds",
        "close_fds",
        "restore_signals",
        "user",
        "group",
        "extra_groups",
        "umask",
    }
)


@dataclass(frozen=True)
class Limits:
    """What one sandbox may use. Numbers must be finite and > 0; None means no limit.

    ``wall_s`` is the caller's budget (``run`` kills the sandbox after it); the others are
    enforced by the kernel, per process except ``processes`` (see the module's docstring).
    """

    wall_s: float = 300.0
    cpu_s: float | None = None
    memory_mb: int | None = 8192
    processes: int | None = 512
    file_mb: int | None = 256

    def __post_init__(self) -> None:
        for field in dataclasses.fields(self):
            value = getattr(self, field.name)
            if value is None and field.name != "wall_s":
                continue
            whole = field.name in ("memory_mb", "processes", "file_mb")
            kind = int if whole else (int, float)
            if (
                isinstance(value, bool)
                or not isinstance(value, kind)
                or not math.isfinite(value)
                or value <= 0
            ):
                wanted = "an integer > 0" if whole else "a finite number > 0"
                allowed = "" if field.name == "wall_s" else " or None"
                raise ValueError(f"Limits.{field.name} must be {wanted}{allowed}, got {value!r}")


@dataclass(frozen=True)
class Isolation:
    """What a sandbox isolates on this machine; see :func:`isolation`."""

    platform: str
    namespaces: bool  # Linux user, mount, PID and network namespaces work
    network: bool  # the network is cut off
    filesystem: bool  # read-only but for the work dir and a private /tmp; hidden paths empty
    processes: bool  # kill() ends the whole process tree, setsid() or not
    limits: tuple[str, ...]  # the kernel's limits applied: rlimits, and pid_max
    reason: str = ""  # why namespaces are not used, when they are not

    def describe(self) -> str:
        """A few plain lines: what is isolated here and what is not."""
        limits = ", ".join(self.limits) or "none"
        if self.namespaces:
            lines = [
                f"Sandbox on {self.platform}: Linux namespaces (user, mount, PID, network, IPC).",
                "  isolated: environment (scrubbed), network (no route out, not even to this "
                "host), filesystem (read-only except the work dir and a private /tmp; hidden "
                "paths are empty), processes (kill() ends every process the code started)",
                f"  limits: {limits}",
                "  NOT isolated: files this user may read that are not hidden; disk space in the "
                "work dir; memory and CPU summed over processes; GPUs; the kernel itself",
            ]
            if "RLIMIT_NPROC" in self.limits:
                lines.append("  processes: at most `processes` processes and threads in all")
            elif "pid_max" in self.limits:
                lines.append(
                    "  processes: between `processes` and `processes` + 300 processes and threads "
                    "(pid_max of the PID namespace; RLIMIT_NPROC does not bind root)"
                )
            else:
                lines.append(
                    "  NO process limit: RLIMIT_NPROC does not bind root, or counts per user on "
                    "Linux < 5.14; pid_max is per PID namespace from Linux 6.14"
                )
            return "\n".join(lines)
        return "\n".join(
            [
                f"Sandbox on {self.platform}: NO isolation ({self.reason}).",
                "  The code runs as a plain subprocess with a scrubbed environment, in a fresh "
                "temporary directory.",
                f"  limits: {limits}",
                "  NOT isolated: filesystem (it can read and write whatever this user can, hidden "
                "paths included), network, processes (one that calls setsid() survives kill())",
            ]
        )


@dataclass(frozen=True)
class Completed:
    """The result of :func:`run`: exit status (negative: killed by that signal) and output."""

    returncode: int
    stdout: bytes
    stderr: bytes
    timed_out: bool  # killed after limits.wall_s
    wall_s: float


def isolation() -> Isolation:
    """What :class:`Sandbox` isolates here. Probes once (about 0.1 s); never raises."""
    if os.environ.get(ENV_SWITCH, "").strip().lower() == "off":
        return _without_namespaces(f"{ENV_SWITCH}=off")
    return _probe()


@functools.cache
def _probe() -> Isolation:
    if sys.platform != "linux":
        return _without_namespaces(f"{sys.platform} has no Linux namespaces")
    try:
        with tempfile.TemporaryDirectory(prefix="llmlab-sandbox-probe-") as workdir:
            process = _spawn(
                [sys.executable, "-I", "-S", "-c", ""],
                workdir=Path(workdir),
                env=_environment(Path(workdir), "/tmp", None),
                limits=Limits(),
                hide=[],
                namespaces=True,
                popen_kwargs={"stdin": subprocess.DEVNULL, "stdout": subprocess.DEVNULL},
            )
            try:
                status = process.wait(timeout=30)
            finally:
                process.kill()  # a no-op once it has exited
            if status != 0:
                raise RuntimeError(f"a test process exited with status {status}")
    except Exception as exc:  # anything: this machine cannot do it, say why
        return _without_namespaces(f"namespaces do not work here: {exc}")
    limits = ["RLIMIT_CPU", "RLIMIT_AS", "RLIMIT_FSIZE", "RLIMIT_CORE"]
    limits += ["RLIMIT_NPROC"] if _nproc_binds() else []
    limits += ["pid_max"] if _kernel_version() >= _PID_MAX_PER_NAMESPACE else []
    return Isolation(sys.platform, True, True, True, True, tuple(limits))


def _without_namespaces(reason: str) -> Isolation:
    if sys.platform == "win32":
        limits: tuple[str, ...] = ()
    elif sys.platform == "linux":
        limits = ("RLIMIT_CPU", "RLIMIT_AS", "RLIMIT_FSIZE", "RLIMIT_CORE")
    else:
        limits = ("RLIMIT_CPU", "RLIMIT_FSIZE", "RLIMIT_CORE")
    return Isolation(sys.platform, False, False, False, False, limits, reason)


def _nproc_binds() -> bool:
    """Whether RLIMIT_NPROC, set inside a user namespace, bounds the whole sandbox."""
    # The kernel never applies it to uid 0 of the host, user namespace or not.
    return os.geteuid() != 0 and _kernel_version() >= _NPROC_PER_NAMESPACE


def _kernel_version() -> tuple[int, ...]:
    numbers = []
    for part in os.uname().release.split("-")[0].split(".")[:2]:
        numbers.append(int(part) if part.isdigit() else 0)
    return tuple(numbers)


class Sandbox:
    """A fresh temporary work dir and one isolated process started in it (context manager).

    ``workdir`` is the process's current directory and HOME; the files and folders in
    ``copy_in`` are copied into it, by name. ``hide`` lists paths that become empty inside;
    ``env`` adds variables to the scrubbed environment. Where this machine cannot isolate
    (see :func:`isolation`), a RuntimeWarning says so, or a RuntimeError with
    ``require_isolation=True``. Leaving the ``with`` block kills the process tree and deletes
    the work dir.
    """

    def __init__(
        self,
        *,
        limits: Limits = Limits(),
        hide: Sequence[str | os.PathLike[str]] = (),
        copy_in: Sequence[str | os.PathLike[str]] = (),
        env: Mapping[str, str] | None = None,
        require_isolation: bool = False,
    ):
        if not isinstance(limits, Limits):
            raise TypeError(f"limits must be a sandbox.Limits, got {type(limits).__name__}")
        self.isolation = isolation()
        if not self.isolation.namespaces:
            if require_isolation:
                raise RuntimeError(self.isolation.describe())
            warnings.warn(self.isolation.describe(), RuntimeWarning, stacklevel=2)
        self.limits = limits
        self.hide = [os.path.realpath(path) for path in hide]
        if self.isolation.namespaces:
            self.hide += [os.path.realpath(os.path.expanduser(path)) for path in SECRET_PATHS]
        self.workdir = Path(tempfile.mkdtemp(prefix="llmlab-sandbox-")).resolve()
        if self.isolation.namespaces:
            self._private_tmp = None
        else:
            self._private_tmp = Path(tempfile.mkdtemp(prefix="llmlab-sandbox-tmp-")).resolve()
        tmp = "/tmp" if self._private_tmp is None else str(self._private_tmp)
        self.env = _environment(self.workdir, tmp, env)
        self.process: subprocess.Popen | None = None
        try:
            for source in map(Path, copy_in):
                if source.is_dir():
                    shutil.copytree(source, self.workdir / source.name, symlinks=True)
                else:
                    shutil.copy2(source, self.workdir / source.name)
        except BaseException:
            self.close()
            raise

    def popen(self, argv: Sequence[str], **popen_kwargs: Any) -> subprocess.Popen:
        """Start ``argv`` in the sandbox, in the work dir; return its ``subprocess.Popen``.

        ``popen_kwargs`` go to Popen (stdin, stdout, stderr, text, bufsize ...); the ones
        that would undo the sandbox (cwd, env, preexec_fn, pass_fds ...) are refused. The
        program is looked up on the sandbox's PATH (the running Python's bin dir first);
        FileNotFoundError if it is not there. Popen's ``terminate()`` and ``kill()`` end the
        whole sandbox too, but only :meth:`kill` waits until every process is gone.
        """
        if self.process is not None:
            raise RuntimeError("a Sandbox runs one process; make a new Sandbox for another")
        argv = [os.fspath(arg) for arg in argv]
        if not argv:
            raise ValueError("argv is empty")
        refused = sorted(_RESERVED_KWARGS & popen_kwargs.keys())
        if refused:
            raise TypeError(f"Sandbox.popen() does not accept {', '.join(refused)}")
        self.process = _spawn(
            argv,
            workdir=self.workdir,
            env=self.env,
            limits=self.limits,
            hide=self.hide,
            namespaces=self.isolation.namespaces,
            popen_kwargs=popen_kwargs,
        )
        return self.process

    def kill(self) -> None:
        """Kill the whole process tree now (SIGKILL) and wait for it; safe to call twice."""
        process = self.process
        if process is None:
            return
        if sys.platform == "win32":
            process.kill()
        elif self.isolation.namespaces:
            if process.poll() is None:
                process.terminate()  # the launcher kills the namespace's init, then exits
                try:
                    process.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    process.kill()
        else:
            try:
                os.killpg(process.pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass  # the group is empty already
        process.wait()

    def close(self) -> None:
        """Kill the process tree and delete the work dir."""
        self.kill()
        for folder in (self.workdir, self._private_tmp):
            if folder is not None:
                _remove_tree(folder)

    def __enter__(self) -> Sandbox:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


def run(
    argv: Sequence[str],
    *,
    input: bytes | None = None,
    limits: Limits = Limits(),
    hide: Sequence[str | os.PathLike[str]] = (),
    copy_in: Sequence[str | os.PathLike[str]] = (),
    env: Mapping[str, str] | None = None,
) -> Completed:
    """Run ``argv`` in a fresh :class:`Sandbox` to completion, or kill it after ``limits.wall_s``.

    ``input`` is its stdin (none if None); stdout and stderr are captured.
    """
    with Sandbox(limits=limits, hide=hide, copy_in=copy_in, env=env) as box:
        return _complete(box, argv, input)


def run_python(code: str, **kwargs: Any) -> Completed:
    """Run Python source ``code`` like :func:`run` does (keyword arguments as for ``run``).

    The code is saved as ``snippet.py`` in the work dir, so tracebacks show its lines.
    """
    input = kwargs.pop("input", None)
    with Sandbox(**kwargs) as box:
        (box.workdir / "snippet.py").write_text(code, encoding="utf-8")
        return _complete(box, [sys.executable, "snippet.py"], input)


def _complete(box: Sandbox, argv: Sequence[str], input: bytes | None) -> Completed:
    start = time.monotonic()
    stdin = subprocess.DEVNULL if input is None else subprocess.PIPE
    process = box.popen(argv, stdin=stdin, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    timed_out = False
    try:
        stdout, stderr = process.communicate(input, timeout=box.limits.wall_s)
    except subprocess.TimeoutExpired:
        timed_out = True
        box.kill()
        try:  # without namespaces, a setsid() survivor may hold the pipes open
            stdout, stderr = process.communicate(timeout=5)
        except subprocess.TimeoutExpired as exc:
            stdout, stderr = exc.stdout or b"", exc.stderr or b""
    return Completed(process.wait(), stdout, stderr, timed_out, time.monotonic() - start)


def _environment(home: Path, tmp: str, extra: Mapping[str, str] | None) -> dict[str, str]:
    """The sandboxed process's whole environment: a minimal one, plus ``extra``."""
    bin_dir = os.path.dirname(sys.executable)
    if sys.platform == "win32":
        path = os.pathsep.join([bin_dir, os.environ.get("PATH", "")])
    else:
        path = os.pathsep.join(dict.fromkeys([bin_dir, "/usr/local/bin", "/usr/bin", "/bin"]))
    env = {
        "PATH": path,
        "LANG": "C.UTF-8",
        "LC_ALL": "C.UTF-8",
        "HOME": str(home),
        "TMPDIR": tmp,
        "PYTHONDONTWRITEBYTECODE": "1",
        "PYTHONNOUSERSITE": "1",
    }
    if sys.platform == "win32":  # Python cannot start on Windows without SYSTEMROOT
        env.update({k: os.environ[k] for k in ("SYSTEMROOT", "WINDIR") if k in os.environ})
        env.update({"TEMP": tmp, "TMP": tmp, "USERPROFILE": str(home)})
    for key, value in (extra or {}).items():
        if not isinstance(key, str) or not isinstance(value, str):
            raise TypeError(f"env must map str to str, got {key!r}: {value!r}")
        env[key] = value
    return env


def _spawn(
    argv: list[str],
    *,
    workdir: Path,
    env: dict[str, str],
    limits: Limits,
    hide: list[str],
    namespaces: bool,
    popen_kwargs: dict[str, Any],
) -> subprocess.Popen:
    """Start the launcher (or, on Windows, ``argv`` itself); return once ``argv`` is exec'd."""
    executable = argv[0]
    if os.sep not in executable and "/" not in executable:
        found = shutil.which(executable, path=env["PATH"])
        if found is None:
            raise FileNotFoundError(errno.ENOENT, "not found on the sandbox's PATH", executable)
        executable = found
    if sys.platform == "win32":
        return subprocess.Popen(
            [executable, *argv[1:]],
            cwd=workdir,
            env=env,
            creationflags=subprocess.CREATE_NEW_PROCESS_GROUP,
            **popen_kwargs,
        )
    mb = 1 << 20
    config = {
        "argv": argv,
        "executable": executable,
        "workdir": str(workdir),
        "hide": hide,
        "namespaces": namespaces,
        "tmpfs_size": f",size={limits.memory_mb}m" if limits.memory_mb else "",
        "rlimits": {
            "RLIMIT_CPU": None if limits.cpu_s is None else math.ceil(limits.cpu_s),
            "RLIMIT_AS": None if limits.memory_mb is None else limits.memory_mb * mb,
            "RLIMIT_FSIZE": None if limits.file_mb is None else limits.file_mb * mb,
            "RLIMIT_NPROC": limits.processes if namespaces and _nproc_binds() else None,
        },
        "pid_max": None,
    }
    if sys.platform != "linux":
        config["rlimits"]["RLIMIT_AS"] = None  # accepted but not enforced on macOS
    if namespaces and limits.processes and _kernel_version() >= _PID_MAX_PER_NAMESPACE:
        # pids 1 .. pid_max - 1 at first; pids from 300 up after a wrap-around
        config["pid_max"] = limits.processes + _RESERVED_PIDS + 1
    status_read, status_write = os.pipe()
    try:
        process = subprocess.Popen(
            [sys.executable, "-I", "-S", __file__, str(status_write), json.dumps(config)],
            cwd="/" if namespaces else workdir,
            env=env,
            pass_fds=(status_write,),
            start_new_session=True,
            **popen_kwargs,
        )
    finally:
        os.close(status_write)
    with open(status_read, "rb") as status:  # EOF once argv is exec'd, or a failure report
        report = status.read()
    if report:
        process.wait()
        for stream in (process.stdin, process.stdout, process.stderr):
            if stream is not None:
                stream.close()
        failure = json.loads(report)
        if failure["exec"]:
            raise OSError(failure["errno"], failure["message"], executable)
        raise RuntimeError(f"sandbox set-up failed: {failure['message']}")
    return process


def _remove_tree(folder: Path) -> None:
    """Delete ``folder`` even where the sandboxed code took away its own permissions."""
    try:
        shutil.rmtree(folder)
    except FileNotFoundError:
        return
    except OSError:
        for root, dirs, _ in os.walk(folder):
            for name in dirs:
                path = os.path.join(root, name)
                if not os.path.islink(path):  # never chmod through a link the code made
                    os.chmod(path, 0o700)
        shutil.rmtree(folder)


# --------------------------------------------------------------------------------------------
# The launcher: ``python -I -S sandbox.py STATUS_FD CONFIG``, in the child.
#
# With namespaces, three processes: the launcher stays outside as the parent's Popen and
# relays the exit status; its child is init (PID 1) of the new PID namespace; init's child
# drops what is left of its privileges and exec's argv. Failures before the exec are written
# to STATUS_FD as JSON; its end-of-file tells the parent that argv runs.

_CLONE_NEWNS = 0x00020000
_CLONE_NEWIPC = 0x08000000
_CLONE_NEWUSER = 0x10000000
_CLONE_NEWPID = 0x20000000
_CLONE_NEWNET = 0x40000000
_MS_RDONLY, _MS_NOSUID, _MS_NODEV, _MS_NOEXEC = 1, 2, 4, 8
_MS_BIND, _MS_REC, _MS_PRIVATE = 4096, 16384, 1 << 18
_PR_SET_PDEATHSIG, _PR_CAPBSET_DROP, _PR_SET_NO_NEW_PRIVS = 1, 24, 38
_SYS_MOUNT_SETATTR = 442  # the same on every architecture that has it (Linux 5.12+)
_AT_FDCWD, _AT_RECURSIVE, _MOUNT_ATTR_RDONLY = -100, 0x8000, 1
_SIOCGIFFLAGS, _SIOCSIFFLAGS, _IFF_UP = 0x8913, 0x8914, 1
_DEVICES = ("null", "zero", "full", "random", "urandom")
_DEVICE_LINKS = {
    "fd": "/proc/self/fd",
    "stdin": "/proc/self/fd/0",
    "stdout": "/proc/self/fd/1",
    "stderr": "/proc/self/fd/2",
}


class _LaunchError(Exception):
    """A failure to report to the parent; ``exec`` tells set-up from the final exec."""

    def __init__(self, message: str, number: int | None = None, exec: bool = False):
        super().__init__(message)
        self.errno, self.exec = number, exec


def _launch(status_fd: int, config: dict[str, Any]) -> NoReturn:
    os.set_inheritable(status_fd, False)
    try:
        import resource

        resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
        if config["namespaces"]:
            _enter_namespaces(config, status_fd)  # returns in init's child only
        _exec(config)
    except _LaunchError as exc:
        report = {"message": str(exc), "errno": exc.errno, "exec": exc.exec}
    except Exception as exc:
        report = {"message": f"{type(exc).__name__}: {exc}", "errno": None, "exec": False}
    os.write(status_fd, json.dumps(report).encode())
    os._exit(127)


class _Libc:
    """The few libc calls the launcher needs that ``os`` lacks; each raises _LaunchError."""

    def __init__(self) -> None:
        self.lib = ctypes.CDLL(None, use_errno=True)

    def call(self, what: str, name: str, *args: Any) -> int:
        result = getattr(self.lib, name)(*args)
        if result == -1:
            number = ctypes.get_errno()
            raise _LaunchError(f"{what}: {os.strerror(number)}", number)
        return result

    def mount(
        self, source: str | None, target: str, fstype: str | None, flags: int, data: str = ""
    ) -> None:
        args = [None if s is None else os.fsencode(s) for s in (source, target, fstype)]
        data_arg = os.fsencode(data) if data else None
        self.call(f"mount {target}", "mount", *args, ctypes.c_ulong(flags), data_arg)

    def set_readonly(self, target: str, readonly: bool = True, recursive: bool = False) -> None:
        """``mount_setattr``: set (or clear) read-only on one mount, or on a whole tree."""
        attr_set, attr_clr = (_MOUNT_ATTR_RDONLY, 0) if readonly else (0, _MOUNT_ATTR_RDONLY)
        attr = ctypes.create_string_buffer(struct.pack("QQQQ", attr_set, attr_clr, 0, 0), 32)
        args = [ctypes.c_long(_SYS_MOUNT_SETATTR), ctypes.c_long(_AT_FDCWD), os.fsencode(target)]
        args += [ctypes.c_long(_AT_RECURSIVE if recursive else 0), attr, ctypes.c_long(32)]
        self.call(f"mount_setattr {target} (needs Linux 5.12)", "syscall", *args)

    def prctl(self, what: str, option: int, value: int) -> int:
        args = (ctypes.c_int(option), ctypes.c_ulong(value), *[ctypes.c_ulong(0)] * 3)
        return self.call(what, "prctl", *args)


def _enter_namespaces(config: dict[str, Any], status_fd: int) -> None:
    """Unshare, build the filesystem, fork init; return in init's child, ready to exec."""
    libc = _Libc()
    uid, gid = os.geteuid(), os.getegid()
    devnull = os.open("/dev/null", os.O_RDWR)
    flags = _CLONE_NEWUSER | _CLONE_NEWNS | _CLONE_NEWPID | _CLONE_NEWNET | _CLONE_NEWIPC
    libc.call("unshare (are user namespaces allowed?)", "unshare", ctypes.c_int(flags))
    for name, text in (
        ("setgroups", "deny"),
        ("uid_map", f"{_INNER_ID} {uid} 1"),
        ("gid_map", f"{_INNER_ID} {gid} 1"),
    ):
        _write(f"/proc/self/{name}", text)
    _write("/proc/sys/user/max_user_namespaces", "0")  # none nested inside this one
    _loopback_up()
    _build_filesystem(libc, config)
    relay_read, relay_write = os.pipe()
    stop_signals = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)  # each: kill everything
    mask = signal.pthread_sigmask(signal.SIG_BLOCK, stop_signals)  # until kill_init can work
    init = os.fork()
    if init == 0:
        os.close(relay_read)
        _be_init(libc, config["pid_max"], relay_write, status_fd, devnull, mask)
        return
    os.close(relay_write)
    os.close(status_fd)
    for fd in (0, 1, 2):  # the pipes' ends are argv's alone: its EOF is the parent's EOF
        os.dup2(devnull, fd)
    init_fd = os.pidfd_open(init)  # unlike the pid, never names another process later

    def kill_init(signum: int, frame: object) -> None:
        try:  # the kernel kills the whole namespace with its init; init's exit waits for it
            signal.pidfd_send_signal(init_fd, signal.SIGKILL)
        except ProcessLookupError:
            pass

    for signum in stop_signals:
        signal.signal(signum, kill_init)
    signal.pthread_sigmask(signal.SIG_SETMASK, mask)
    _, status = os.waitpid(init, 0)
    report = os.read(relay_read, 4)
    if len(report) == 4:  # init reports how argv ended; otherwise init itself was killed
        (status,) = struct.unpack("i", report)
    _exit_as(status)


def _be_init(
    libc: _Libc, pid_max: int | None, relay_write: int, status_fd: int, devnull: int, mask: set
) -> None:
    """PID 1: mount /proc, fork argv's process, reap orphans, report how argv ended."""
    libc.prctl("set the parent-death signal", _PR_SET_PDEATHSIG, signal.SIGKILL)
    libc.mount("proc", "/proc", "proc", _MS_NOSUID | _MS_NODEV | _MS_NOEXEC)
    with open("/proc/sys/kernel/pid_max") as file:  # this namespace's own
        current = int(file.read())
    if pid_max is not None and pid_max < current:
        _write("/proc/sys/kernel/pid_max", str(pid_max))
    libc.set_readonly("/proc")
    target = os.fork()
    if target == 0:
        os.close(relay_write)
        os.close(devnull)
        signal.pthread_sigmask(signal.SIG_SETMASK, mask)  # exec keeps a blocked mask
        libc.prctl("set no_new_privs", _PR_SET_NO_NEW_PRIVS, 1)
        for capability in itertools.count():  # empty the bounding set
            try:
                libc.prctl(f"drop capability {capability}", _PR_CAPBSET_DROP, capability)
            except _LaunchError as exc:
                if exc.errno == errno.EINVAL:  # past the last capability
                    break
                raise
        os.setsid()
        return
    os.close(status_fd)
    for fd in (0, 1, 2):
        os.dup2(devnull, fd)
    while True:
        pid, status = os.waitpid(-1, 0)
        if pid == target:
            os.write(relay_write, struct.pack("i", status))
            os._exit(0)  # the kernel kills whatever is left in the namespace


def _build_filesystem(libc: _Libc, config: dict[str, Any]) -> None:
    """All read-only but the work dir and a private /tmp, /var/tmp, /dev/shm; a minimal /dev."""
    workdir, size = config["workdir"], config["tmpfs_size"]
    libc.mount(None, "/", None, _MS_REC | _MS_PRIVATE)
    # Handles on what must reappear once the folders that hold them are covered.
    work_fd = os.open(workdir, os.O_PATH | os.O_DIRECTORY)
    devices = [d for d in _DEVICES if os.path.exists(f"/dev/{d}")]
    devices += sorted(
        d
        for d in os.listdir("/dev")
        if d.startswith("nvidia") and stat.S_ISCHR(os.stat(f"/dev/{d}").st_mode)
    )
    device_fds = {name: os.open(f"/dev/{name}", os.O_PATH) for name in devices}
    for path in config["hide"]:
        if os.path.isdir(path):
            flags = _MS_RDONLY | _MS_NOSUID | _MS_NODEV | _MS_NOEXEC
            libc.mount("tmpfs", path, "tmpfs", flags, "size=4k,mode=755")
        elif os.path.lexists(path):
            libc.mount("/dev/null", path, None, _MS_BIND)
    libc.set_readonly("/", recursive=True)
    private = _MS_NOSUID | _MS_NODEV
    libc.mount("tmpfs", "/dev", "tmpfs", private | _MS_NOEXEC, "size=64k,mode=755")
    for name, fd in device_fds.items():
        os.close(os.open(f"/dev/{name}", os.O_WRONLY | os.O_CREAT, 0o600))
        libc.mount(f"/proc/self/fd/{fd}", f"/dev/{name}", None, _MS_BIND)
        os.close(fd)
    for name, target in _DEVICE_LINKS.items():
        os.symlink(target, f"/dev/{name}")
    os.mkdir("/dev/shm")
    for path in ("/dev/shm", "/tmp", "/var/tmp"):
        if os.path.isdir(path):
            libc.mount("tmpfs", path, "tmpfs", private, f"mode=1777{size}")
    if os.path.isdir("/run"):
        libc.mount("tmpfs", "/run", "tmpfs", private | _MS_NOEXEC, "size=64k,mode=755")
    os.makedirs(workdir, exist_ok=True)  # its folder may be covered by now
    libc.mount(f"/proc/self/fd/{work_fd}", workdir, None, _MS_BIND)
    os.close(work_fd)
    libc.set_readonly(workdir, readonly=False)
    for path in ("/dev", "/run"):
        if os.path.ismount(path):
            libc.set_readonly(path)


def _loopback_up() -> None:
    import fcntl
    import socket

    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        request = struct.pack("16sH14x", b"lo", 0)
        flags = struct.unpack("16sH14x", fcntl.ioctl(sock, _SIOCGIFFLAGS, request))[1]
        fcntl.ioctl(sock, _SIOCSIFFLAGS, struct.pack("16sH14x", b"lo", flags | _IFF_UP))


def _exec(config: dict[str, Any]) -> NoReturn:
    """Apply the limits and exec argv: the last step, in or out of namespaces."""
    import resource

    for name, value in config["rlimits"].items():
        if value is not None:
            kind = getattr(resource, name)
            hard = resource.getrlimit(kind)[1]
            wanted = value + 1 if name == "RLIMIT_CPU" else value  # SIGXCPU, then SIGKILL
            if hard != resource.RLIM_INFINITY:
                value, wanted = min(value, hard), min(wanted, hard)
            resource.setrlimit(kind, (value, wanted))
    if sys.platform == "linux" and not config["namespaces"]:
        _Libc().prctl("set no_new_privs", _PR_SET_NO_NEW_PRIVS, 1)
    for signum in (signal.SIGPIPE, signal.SIGXFSZ, signal.SIGINT):  # as Python found them
        signal.signal(signum, signal.SIG_DFL)
    os.chdir(config["workdir"])
    try:
        os.execve(config["executable"], config["argv"], os.environ)
    except OSError as exc:
        raise _LaunchError(exc.strerror or str(exc), exc.errno, exec=True) from exc


def _exit_as(status: int) -> NoReturn:
    """End this process as the wait status ``status`` says argv ended."""
    if os.WIFSIGNALED(status):
        signum = os.WTERMSIG(status)
        if signum != signal.SIGKILL:  # whose disposition cannot be changed
            signal.signal(signum, signal.SIG_DFL)
        os.kill(os.getpid(), signum)
        os._exit(128 + signum)  # a signal whose default is not to terminate
    os._exit(os.waitstatus_to_exitcode(status))


def _write(path: str, text: str) -> None:
    try:
        with open(path, "w") as file:
            file.write(text)
    except OSError as exc:
        raise _LaunchError(f"write {path}: {exc.strerror}", exc.errno) from exc


if __name__ == "__main__":
    _launch(int(sys.argv[1]), json.loads(sys.argv[2]))
