"""llmlab.sandbox: each escape a submission might try fails inside the sandbox.

The tests that need Linux namespaces are skipped, with the reason, where they do not work;
the fallback (LLMLAB_SANDBOX=off) is tested everywhere.
"""

from __future__ import annotations

import math
import os
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import time
import uuid
import warnings
from pathlib import Path

import pytest

from llmlab import sandbox
from llmlab.sandbox import Limits, Sandbox, isolation, run, run_python

ROOT = Path(__file__).resolve().parents[1]
ISOLATION = isolation()
needs_namespaces = pytest.mark.skipif(
    not ISOLATION.namespaces, reason=f"no namespace sandbox here: {ISOLATION.reason}"
)
needs_posix = pytest.mark.skipif(sys.platform == "win32", reason="no rlimits on Windows")
needs_linux = pytest.mark.skipif(sys.platform != "linux", reason="needs Linux (/proc, RLIMIT_AS)")


def host_processes_with(marker: str) -> list[int]:
    """Pids of this machine's processes whose command line contains ``marker``."""
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                if marker.encode() in Path(f"/proc/{entry}/cmdline").read_bytes():
                    found.append(int(entry))
            except OSError:
                pass  # gone meanwhile
    return found


def read_line(process: subprocess.Popen, timeout: float = 10.0) -> bytes:
    """One line of the process's stdout, or fail the test after ``timeout`` s."""
    import selectors

    with selectors.DefaultSelector() as selector:
        selector.register(process.stdout, selectors.EVENT_READ)
        assert selector.select(timeout), f"no output within {timeout} s"
    return process.stdout.readline()


# --------------------------------------------------------------------------------------------
# Limits and the API


@pytest.mark.parametrize(
    "field, value",
    [
        ("wall_s", 0),
        ("wall_s", None),
        ("wall_s", math.inf),
        ("cpu_s", -1.0),
        ("cpu_s", math.nan),
        ("memory_mb", 0),
        ("memory_mb", 1.5),
        ("memory_mb", True),
        ("processes", "512"),
        ("file_mb", -5),
    ],
)
def test_limits_reject_bad_values(field, value):
    with pytest.raises(ValueError, match=rf"Limits\.{field} must be .*got {value!r}"):
        Limits(**{field: value})


def test_limits_accept_none_and_positive_numbers():
    limits = Limits(wall_s=0.5, cpu_s=2, memory_mb=None, processes=None, file_mb=1)
    assert limits.cpu_s == 2 and limits.memory_mb is None


def test_isolation_is_cached_and_describes_itself():
    assert isolation() is ISOLATION
    text = ISOLATION.describe()
    assert ISOLATION.platform in text and "NOT isolated" in text


def test_popen_refuses_arguments_that_undo_the_sandbox():
    with Sandbox() as box, pytest.raises(TypeError, match="cwd, env"):
        box.popen([sys.executable, "-c", "pass"], env={}, cwd="/")


def test_a_missing_program_is_file_not_found():
    with Sandbox() as box, pytest.raises(FileNotFoundError):
        box.popen(["no-such-program-anywhere"])


# --------------------------------------------------------------------------------------------
# What the sandboxed code gets


def test_workdir_is_writable_and_holds_copy_in(tmp_path):
    (tmp_path / "answer.py").write_text("ANSWER = 42\n")
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "x.txt").write_text("x")
    code = (
        "import os, answer\n"
        "print(answer.ANSWER, sorted(os.listdir('.')), open('data/x.txt').read())\n"
        "open('result.txt', 'w').write('written')\n"
        "print(os.getcwd() == os.environ['HOME'])\n"
    )
    with Sandbox(copy_in=[tmp_path / "answer.py", tmp_path / "data"]) as box:
        (box.workdir / "main.py").write_text(code)
        process = box.popen([sys.executable, "main.py"], stdout=subprocess.PIPE)
        out, _ = process.communicate(timeout=30)
        assert process.returncode == 0
        assert out.decode().split("\n")[:2] == ["42 ['answer.py', 'data', 'main.py'] x", "True"]
        assert (box.workdir / "result.txt").read_text() == "written"
        workdir = box.workdir
    assert not workdir.exists()


def test_popen_pipes_work_both_ways():
    echo = (
        "import struct, sys\n"
        "while header := sys.stdin.buffer.read(4):\n"
        "    payload = sys.stdin.buffer.read(struct.unpack('>I', header)[0])\n"
        "    sys.stdout.buffer.write(header + payload[::-1])\n"
        "    sys.stdout.buffer.flush()\n"
    )
    with Sandbox() as box:
        process = box.popen(
            [sys.executable, "-c", echo], stdin=subprocess.PIPE, stdout=subprocess.PIPE
        )
        for payload in (b"hello", b"\x00" * 70_000, b""):
            process.stdin.write(struct.pack(">I", len(payload)) + payload)
            process.stdin.flush()
            (size,) = struct.unpack(">I", process.stdout.read(4))
            assert process.stdout.read(size) == payload[::-1]
        process.stdin.close()
        assert process.wait(timeout=10) == 0
        process.stdout.close()


def test_run_returns_output_and_exit_status():
    result = run_python("import sys; print('out'); print('err', file=sys.stderr); sys.exit(3)")
    assert (result.returncode, result.stdout, result.stderr) == (3, b"out\n", b"err\n")
    assert not result.timed_out
    assert run([sys.executable, "-c", "print(input())"], input=b"fed\n").stdout == b"fed\n"


def test_run_kills_an_infinite_loop_at_the_wall_limit():
    result = run_python("while True: pass", limits=Limits(wall_s=1.0))
    assert result.timed_out
    assert sys.platform == "win32" or result.returncode == -signal.SIGKILL
    assert 1.0 <= result.wall_s < 3.0


def test_torch_and_llmlab_import_under_the_default_limits():
    code = "import torch, llmlab; a = torch.randn(64, 64); print(tuple((a @ a).shape))"
    result = run_python(code, limits=Limits(wall_s=120))
    assert result.stdout == b"(64, 64)\n", result.stderr.decode()[-2000:]


# --------------------------------------------------------------------------------------------
# Escape attempts: each must fail


def test_the_parents_secrets_are_not_in_the_environment(monkeypatch):
    token = f"s3cret-{uuid.uuid4().hex}"
    monkeypatch.setenv("LLMLAB_TEST_SECRET", token)
    code = (
        "import glob, os\n"
        "print(os.environ.get('LLMLAB_TEST_SECRET'), os.environ['VISIBLE'])\n"
        "for path in glob.glob('/proc/*/environ'):\n"  # the grader's own environment
        "    try:\n"
        f"        if {token!r}.encode() in open(path, 'rb').read():\n"
        "            print('found in', path)\n"
        "    except OSError:\n"
        "        pass\n"
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        result = run_python(code, env={"VISIBLE": "yes"})
    assert result.returncode == 0, result.stderr.decode()
    lines = result.stdout.decode().splitlines()
    assert lines[0] == "None yes"
    if ISOLATION.namespaces:  # without, the code can read the grader's /proc/PID/environ
        assert lines[1:] == []


@needs_namespaces
def test_hidden_paths_are_empty_and_the_rest_of_the_repo_is_readable():
    hidden_dir, hidden_file = ROOT / "tests", ROOT / "pyproject.toml"
    code = (
        "import os\n"
        f"print(os.listdir({str(hidden_dir)!r}))\n"
        f"print(open({str(hidden_file)!r}, 'rb').read())\n"
        f"print(os.path.exists({str(hidden_dir / 'conftest.py')!r}))\n"
        f"print(len(open({str(ROOT / 'utils/llmlab/sandbox.py')!r}).read()) > 0)\n"
    )
    result = run_python(code, hide=[hidden_dir, hidden_file])
    assert result.stdout.decode().split("\n")[:4] == ["[]", "b''", "False", "True"], result.stderr


@needs_namespaces
def test_writing_outside_the_workdir_fails(tmp_path):
    classmate = tmp_path / "classmate"
    classmate.mkdir()
    (classmate / "answer.py").write_text("mine")
    name = f"pwned-{uuid.uuid4().hex}"
    repo_file = ROOT / name
    existing = ROOT / "utils" / "llmlab" / "__init__.py"
    code = (
        "import os\n"
        f"os.makedirs({str(classmate)!r}, exist_ok=True)\n"
        f"open({str(classmate / 'answer.py')!r}, 'w').write('overwritten')\n"
        f"open({str(classmate / 'pwned')!r}, 'w').write('x')\n"
        "for path, flags in [\n"
        f"    ({str(repo_file)!r}, os.O_WRONLY | os.O_CREAT),\n"
        f"    ({str(existing)!r}, os.O_WRONLY | os.O_APPEND),\n"
        "    ('/etc/pwned', os.O_WRONLY | os.O_CREAT),\n"
        "    ('/usr/pwned', os.O_WRONLY | os.O_CREAT),\n"
        "]:\n"
        "    try:\n"
        "        os.close(os.open(path, flags, 0o644))\n"
        "        print('WROTE', path)\n"
        "    except OSError as exc:\n"
        "        print(exc.errno)\n"
        f"open(os.path.join(os.environ['HOME'], '..', {name!r}), 'w').write('x')\n"  # /tmp
    )
    before = existing.stat()
    result = run_python(code)
    assert result.returncode == 0, result.stderr.decode()
    # Inside, /tmp is a private tmpfs: the classmate's folder there is a fresh, empty one.
    assert (classmate / "answer.py").read_text() == "mine"
    assert not (classmate / "pwned").exists()
    assert not repo_file.exists()
    assert not (Path(tempfile.gettempdir()) / name).exists()  # the sandbox's /tmp is its own
    assert existing.stat().st_mtime_ns == before.st_mtime_ns
    assert result.stdout.decode().split() == ["30", "30", "30", "30"]  # EROFS, EROFS ...


@needs_namespaces
def test_mounts_cannot_be_undone():
    hidden = ROOT / "tests"
    code = (
        "import ctypes, os, subprocess\n"
        "libc = ctypes.CDLL(None, use_errno=True)\n"
        "def attempt(result):\n"
        "    print(result, os.strerror(ctypes.get_errno()) if result else '')\n"
        f"attempt(libc.umount2({str(hidden).encode()!r}, 2))\n"  # MNT_DETACH
        "attempt(libc.mount(None, b'/', None, ctypes.c_ulong(32 | 4096), None))\n"
        "attempt(libc.unshare(0x10000000 | 0x20000))\n"  # a new user+mount namespace
        "status = dict(line.split(':', 1) for line in open('/proc/self/status'))\n"
        "print(status['CapEff'].strip(), status['CapBnd'].strip(), status['NoNewPrivs'].strip())\n"
        f"print(os.listdir({str(hidden)!r}))\n"
    )
    result = run_python(code, hide=[hidden])
    lines = result.stdout.decode().splitlines()
    assert lines[0] == "-1 Operation not permitted"  # umount
    assert lines[1] == "-1 Operation not permitted"  # remount / read-write
    assert lines[2] == "-1 No space left on device"  # no nested user namespace: limit 0
    assert lines[3].split() == ["0000000000000000", "0000000000000000", "1"]
    assert lines[4] == "[]"


@needs_namespaces
def test_the_network_is_cut_off():
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        port = listener.getsockname()[1]
        code = (
            "import socket\n"
            f"for address in [('127.0.0.1', {port}), ('1.1.1.1', 53)]:\n"
            "    try:\n"
            "        socket.create_connection(address, timeout=3).close()\n"
            "        print('connected', address)\n"
            "    except OSError as exc:\n"
            "        print(type(exc).__name__)\n"
            "with socket.socket() as own:\n"  # its own loopback works
            "    own.bind(('127.0.0.1', 0)); own.listen()\n"
            "    socket.create_connection(own.getsockname(), timeout=3).close()\n"
            "    print('own loopback ok')\n"
        )
        result = run_python(code)
        listener.setblocking(False)
        with pytest.raises(BlockingIOError):
            listener.accept()
    assert result.stdout.decode().splitlines() == [
        "ConnectionRefusedError",
        "OSError",
        "own loopback ok",
    ], result.stderr.decode()


@needs_namespaces
def test_kill_leaves_no_survivor_even_after_setsid_and_double_fork():
    marker = f"llmlab-survivor-{uuid.uuid4().hex}"
    code = (
        "import os, subprocess, sys, time\n"
        "marker = os.environ['MARKER']\n"
        "sleeper = [sys.executable, '-c', 'import time; time.sleep(1000)', marker]\n"
        "subprocess.Popen(sleeper, start_new_session=True)\n"
        "if os.fork() == 0:\n"
        "    os.setsid()\n"
        "    if os.fork() == 0:\n"
        "        os.execv(sys.executable, sleeper)\n"
        "    os._exit(0)\n"
        "os.wait()\n"
        "def running():\n"
        "    pids = [p for p in os.listdir('/proc') if p.isdigit()]\n"
        "    return sum(marker.encode() in open(f'/proc/{p}/cmdline', 'rb').read() for p in pids)\n"
        "while running() < 2:\n"
        "    time.sleep(0.01)\n"
        "print('ready', flush=True)\n"
        "time.sleep(1000)\n"
    )
    with Sandbox(env={"MARKER": marker}) as box:
        process = box.popen(
            [sys.executable, "-c", code], stdin=subprocess.DEVNULL, stdout=subprocess.PIPE
        )
        assert read_line(process) == b"ready\n"
        assert len(host_processes_with(marker)) == 2  # the daemons run, seen from the host
        box.kill()
        assert host_processes_with(marker) == []
        assert process.returncode == -signal.SIGKILL
        box.kill()  # idempotent
        process.stdout.close()


@needs_namespaces
@pytest.mark.skipif(
    not {"RLIMIT_NPROC", "pid_max"} & set(ISOLATION.limits),
    reason="no process limit in this sandbox: see isolation().describe()",
)
def test_a_fork_bomb_is_bounded_by_the_process_limit():
    code = (
        "import os, time\n"
        "children = 0\n"
        "for _ in range(1000):\n"
        "    try:\n"
        "        pid = os.fork()\n"
        "    except OSError:\n"
        "        break\n"
        "    if pid == 0:\n"
        "        time.sleep(60)\n"
        "        os._exit(0)\n"
        "    children += 1\n"
        "print(children)\n"
    )
    result = run_python(code, limits=Limits(processes=16, wall_s=30))
    # RLIMIT_NPROC (not for root) counts exactly; pid_max allows up to 300 more.
    bound = 16 if "RLIMIT_NPROC" in ISOLATION.limits else 16 + 300
    assert 0 < int(result.stdout) < bound, result.stderr.decode()
    assert subprocess.run([sys.executable, "-c", "pass"]).returncode == 0  # the host is fine


@needs_linux
def test_a_memory_hog_gets_memory_error():
    code = (
        "try:\n"
        "    hog = bytearray(1024 * 2**20)\n"
        "    print('allocated', len(hog))\n"
        "except MemoryError:\n"
        "    print('MemoryError')\n"
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # where there are no namespaces
        result = run_python(code, limits=Limits(memory_mb=256))
    assert result.stdout == b"MemoryError\n", result.stderr.decode()


@needs_posix
def test_a_cpu_loop_is_killed_by_cpu_s():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        result = run_python("while True: pass", limits=Limits(cpu_s=1, wall_s=20))
    assert not result.timed_out
    assert result.returncode in (-signal.SIGXCPU, -signal.SIGKILL)
    assert result.wall_s < 10


@needs_posix
def test_a_big_file_is_stopped_by_file_mb():
    code = (
        "try:\n"
        "    open('big.bin', 'wb').write(bytes(2 * 2**20))\n"
        "    print('wrote')\n"
        "except OSError as exc:\n"
        "    print(exc.errno)\n"
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        result = run_python(code, limits=Limits(file_mb=1))
    assert result.stdout == b"27\n", result.stderr.decode()  # EFBIG


# --------------------------------------------------------------------------------------------
# Without namespaces


@pytest.fixture
def fallback(monkeypatch):
    monkeypatch.setenv(sandbox.ENV_SWITCH, "off")
    assert not isolation().namespaces


def test_the_fallback_warns_and_still_runs_code(fallback, monkeypatch):
    monkeypatch.setenv("LLMLAB_TEST_SECRET", "s3cret")
    assert "NO isolation (LLMLAB_SANDBOX=off)" in isolation().describe()
    with pytest.warns(RuntimeWarning, match="NO isolation"):
        box = Sandbox()
    with box:
        code = "import os; print(os.getcwd() == os.environ['HOME'], os.environ.get('LLMLAB_TEST_SECRET'))"
        process = box.popen([sys.executable, "-c", code], stdout=subprocess.PIPE)
        assert process.communicate(timeout=30)[0] == b"True None\n"
        process.stdout.close()
    with pytest.raises(RuntimeError, match="NO isolation"):
        Sandbox(require_isolation=True)


@needs_linux
def test_the_fallback_kill_ends_the_process_group(fallback):
    marker = f"llmlab-group-{uuid.uuid4().hex}"
    code = (
        "import os, subprocess, sys, time\n"
        "sleeper = [sys.executable, '-c', 'import time; time.sleep(1000)', os.environ['MARKER']]\n"
        "subprocess.Popen(sleeper)\n"
        "print('ready', flush=True)\n"
        "time.sleep(1000)\n"
    )
    with pytest.warns(RuntimeWarning), Sandbox(env={"MARKER": marker}) as box:
        process = box.popen([sys.executable, "-c", code], stdout=subprocess.PIPE)
        assert read_line(process) == b"ready\n"
        deadline = time.monotonic() + 10
        while not host_processes_with(marker) and time.monotonic() < deadline:
            time.sleep(0.01)
        assert host_processes_with(marker)
        box.kill()
        assert process.returncode == -signal.SIGKILL
        deadline = time.monotonic() + 5  # the group's other members die just after
        while host_processes_with(marker) and time.monotonic() < deadline:
            time.sleep(0.01)
        assert host_processes_with(marker) == []
        process.stdout.close()
