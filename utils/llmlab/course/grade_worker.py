"""The grader's worker: runs one student's lab cells inside the sandbox, on the grader's orders.

    python -m llmlab.course.grade_worker      (started by llmlab.course.grading, never by hand)

The grader (trusted) and this worker (untrusted: the student's code runs here) talk over the
worker's stdin and stdout, one message per frame (8-byte length, then the bytes):

- grader -> worker: a pickled dict, ``{"op": "exec" | "provenance" | "call" | "bind", ...}``.
  The worker trusts the grader, so pickle is fine in this direction.
- worker -> grader: ``torch.save`` of plain data (numbers, strings, lists, dicts, tensors),
  which the grader reads with ``torch.load(weights_only=True)``: nothing the student returns
  can run code in the grader. Values other than those (a numpy array, a Counter, a set, any
  object) are sent as tagged stand-ins (:func:`encode`, :func:`decode`).

The worker holds no expected value: the references run and the comparisons happen in the
grader. What the worker reports about a call (whose function, which calls it made, whether it
timed out) is re-checked by the grader where it can be; the grader also kills the worker when
it does not answer in time.
"""

from __future__ import annotations

import collections
import contextlib
import importlib
import io
import os
import pickle
import struct
import sys
from typing import Any, BinaryIO

import torch

from llmlab import checks
from llmlab.checks import Outcome, _driven, call_student

_FRAME = struct.Struct(">Q")
_MAX_STDOUT = 20_000  # characters of a cell's output kept for the executed notebook
_TAG = "__llmlab_value__"


def write_frame(stream: BinaryIO, payload: bytes) -> None:
    """One frame: the payload's length, then the payload."""
    stream.write(_FRAME.pack(len(payload)) + payload)
    stream.flush()


def read_frame(stream: BinaryIO) -> bytes | None:
    """The next frame's payload, or None at the end of the stream."""
    header = stream.read(_FRAME.size)
    if len(header) < _FRAME.size:
        return None
    (size,) = _FRAME.unpack(header)
    payload = stream.read(size)
    return payload if len(payload) == size else None


# --------------------------------------------------------------------------------------------
# Values the student returns, as plain data


def encode(value: Any, depth: int = 0) -> Any:
    """``value`` as data ``torch.load(weights_only=True)`` accepts; other types tagged."""
    if depth > 20:
        return {_TAG: "opaque", "type": "deeply nested value", "module": "", "shape": None}
    if value is None or isinstance(value, (bool, int, float, str, bytes)):
        return value
    if isinstance(value, torch.Tensor):
        return value.detach().clone().as_subclass(torch.Tensor)
    if isinstance(value, collections.Counter):
        return {_TAG: "Counter", "items": [[encode(k, depth + 1), v] for k, v in value.items()]}
    if isinstance(value, (set, frozenset)):
        items = [encode(v, depth + 1) for v in value]
        return {_TAG: type(value).__name__, "items": items}
    if type(value) in (list, tuple):
        return type(value)(encode(v, depth + 1) for v in value)
    if type(value) is dict:
        return {encode(k, depth + 1): encode(v, depth + 1) for k, v in value.items()}
    if isinstance(value, tuple):  # a namedtuple: its values
        return tuple(encode(v, depth + 1) for v in value)
    if isinstance(value, torch.dtype):
        return {_TAG: "dtype", "name": str(value)}
    shape = getattr(value, "shape", None)
    try:
        shape = tuple(int(n) for n in shape) if shape is not None else None
    except (TypeError, ValueError):
        shape = None
    kind = type(value)
    return {_TAG: "opaque", "type": kind.__name__, "module": kind.__module__, "shape": shape}


class Opaque:
    """A stand-in for a value of a type the worker does not send (a numpy array, an object)."""

    def __init__(self, shape: tuple[int, ...] | None):
        if shape is not None:
            self.shape = shape


def decode(value: Any) -> Any:
    """The inverse of :func:`encode`, run in the grader on what ``torch.load`` returned."""
    if isinstance(value, list):
        return [decode(v) for v in value]
    if isinstance(value, tuple):
        return tuple(decode(v) for v in value)
    if not isinstance(value, dict):
        return value
    tag = value.get(_TAG)
    if tag is None:
        return {decode(k): decode(v) for k, v in value.items()}
    if tag == "Counter":
        return collections.Counter({decode(k): v for k, v in value["items"]})
    if tag in ("set", "frozenset"):
        items = [decode(v) for v in value["items"]]
        return set(items) if tag == "set" else frozenset(items)
    if tag == "dtype":
        return getattr(torch, str(value["name"]).removeprefix("torch."), value["name"])
    stand_in = type(str(value.get("type", "object")), (Opaque,), {})
    stand_in.__module__ = str(value.get("module", ""))
    return stand_in(value.get("shape"))


def load_reply(payload: bytes) -> dict[str, Any]:
    """A worker's reply, read safely (``weights_only=True``) and decoded."""
    data = torch.load(io.BytesIO(payload), weights_only=True)
    if not isinstance(data, dict):
        raise ValueError("the worker's reply is not a dict")
    return decode(data)


# --------------------------------------------------------------------------------------------
# The worker


def _resolve(where: tuple[str, str] | None) -> Any:
    """The object named by ``(module, qualname)``."""
    if where is None:
        return None
    module, qualname = where
    obj: Any = importlib.import_module(module)
    for part in qualname.split("."):
        obj = getattr(obj, part)
    return obj


class Worker:
    """Runs the grader's orders in one namespace, the notebook's ``__main__``."""

    def __init__(self) -> None:
        self.namespace: dict[str, Any] = {"__name__": "__main__", "__builtins__": __builtins__}

    def exec(self, source: str, filename: str, time_s: float | None) -> dict[str, Any]:
        """Run one cell; its printed output and, when it raised, the error in one line."""
        out = io.StringIO()
        reply: dict[str, Any] = {"error": "", "timed_out": False}
        try:
            code = compile(source, filename, "exec")
            with (
                contextlib.redirect_stdout(out),
                contextlib.redirect_stderr(out),
                checks.time_limit(time_s),
            ):
                exec(code, self.namespace)  # noqa: S102 - running the student's cell is the point
        except checks.CaseTimeout:
            reply["timed_out"] = True
        except BaseException as exc:  # noqa: BLE001 - a student's cell may raise anything
            reply["error"] = f"{type(exc).__name__}: {exc}"[:300]
        reply["stdout"] = out.getvalue()[:_MAX_STDOUT]
        return reply

    def provenance(self, name: str, reference: tuple[str, str]) -> dict[str, Any]:
        """Whether the notebook's ``name`` is the student's own function (None) or why not."""
        if name not in self.namespace:
            return {"problem": f"the notebook does not define `{name}`", "missing": True}
        fn = self.namespace[name]
        if not callable(fn):
            return {"problem": f"`{name}` is {checks.describe(fn)}, not a function"}
        return {"problem": checks.not_students(fn, _resolve(reference), name)}

    def call(self, message: dict[str, Any]) -> dict[str, Any]:
        """One case: the student's function (through the check's driver) on the given inputs."""
        fn = self.namespace.get(message["name"])
        run = _resolve(message["run"])
        args, kwargs = pickle.loads(message["args"]), pickle.loads(message["kwargs"])
        student = fn if run is None else _driven(run, fn)
        outcome = call_student(
            student,
            args,
            kwargs,
            time_s=message["time_s"],
            forbid=message["forbid"],
            reference=_resolve(message["reference"]),
        )
        fields = {key: getattr(outcome, key) for key in Outcome.__dataclass_fields__}
        fields["value"] = encode(outcome.value)
        fields["calls"] = list(outcome.calls)
        fields["error_types"] = list(outcome.error_types)
        return {"outcome": fields}

    def bind(self, name: str, to: tuple[str, str] | None) -> dict[str, Any]:
        """After a check: keep the student's function (``to`` None) or use the reference."""
        if to is not None:
            self.namespace[name] = _resolve(to)
        return {}

    def handle(self, message: dict[str, Any]) -> dict[str, Any]:
        op = message["op"]
        if op == "exec":
            return self.exec(message["source"], message["filename"], message["time_s"])
        if op == "provenance":
            return self.provenance(message["name"], message["reference"])
        if op == "call":
            return self.call(message)
        if op == "bind":
            return self.bind(message["name"], message["to"])
        return {"error": f"unknown op {op!r}"}


def main() -> int:
    """Serve the grader's orders until its pipe closes."""
    inbox = sys.stdin.buffer
    outbox = os.fdopen(os.dup(1), "wb")  # the frames get a descriptor of their own ...
    os.dup2(2, 1)  # ... and anything written to stdout (a print, os.write(1, ...)) goes to stderr
    sys.stdout = sys.stderr
    worker = Worker()
    while (payload := read_frame(inbox)) is not None:
        message = pickle.loads(payload)
        try:
            reply = worker.handle(message)
        except BaseException as exc:  # noqa: BLE001 - report, and let the grader decide
            reply = {"error": f"worker failed: {type(exc).__name__}: {exc}"[:300]}
        buffer = io.BytesIO()
        torch.save(reply, buffer)
        write_frame(outbox, buffer.getvalue())
    return 0


if __name__ == "__main__":
    sys.exit(main())
