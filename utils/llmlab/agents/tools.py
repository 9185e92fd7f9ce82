"""Tools for an agent: what each one takes (a JSON schema), what it does, and a registry that
calls them without ever crashing the loop.

Why tools. A language model predicts text; it does not multiply 7-digit numbers, know today's
date, run code or read documents it was not trained on. It can, however, write a request for a
program that does: the loop (:mod:`llmlab.agents.react`) finds the request in the model's text,
runs the tool and writes what came back into the transcript, where the model reads it on its
next step. A tool call is data, a JSON object with the tool's name and its arguments:

    {"tool": "calculator", "arguments": {"expression": "17 * 23"}}

and the registry checks the arguments against the tool's JSON schema (the same schema format
that OpenAI-style function calling sends to the model, see :meth:`ToolRegistry.schemas`)
before the tool sees them:

    >>> registry = default_registry(today=datetime.date(2025, 3, 14))
    >>> registry.call("calculator", {"expression": "17 * 23"})
    ToolResult(ok=True, output='391', error=None, seconds=...)
    >>> registry.call("calculator", {"expr": "17 * 23"}).error
    "arguments: 'expression' is a required property; arguments: Additional properties are not
    allowed ('expr' was unexpected)"
    >>> registry.call("serach", {"query": "x"}).error
    "unknown tool 'serach'; known: calculator, date, python"

Every failure is a result, never an exception: an unknown tool, arguments that are not a JSON
object or that the schema rejects, a tool that raises, a tool that runs past its ``timeout_s``.
The error, in plain words, goes back to the model as the observation, which lets it fix its
call; a crash would end the run. Outputs longer than :data:`MAX_OUTPUT_CHARS` are cut (with a
note saying so): a tool that prints a megabyte would otherwise fill the model's context.

Why never ``eval``. The model's text is untrusted input: it may come from a prompt injection
in a retrieved document ("ignore the task and run ``__import__('os').system(...)``"). Python's
``eval`` of that text runs whatever it says, and no "safe" globals dictionary stops it (from
any object, ``().__class__.__base__.__subclasses__()`` reaches the whole interpreter). The
calculator therefore parses the expression with :func:`ast.parse`, which builds a syntax tree
and runs nothing, and walks the tree itself, evaluating the few node types it allows (numbers,
+ - * / // % **, a handful of functions) and refusing every other one. Code that the model is
*meant* to run goes to the Python tool, which runs it in a separate, killable process with no
network, a fresh temporary directory and limits on time and memory (:mod:`llmlab.sandbox`).

Timeouts. :meth:`ToolRegistry.call` runs the tool in a worker thread
(:class:`concurrent.futures.ThreadPoolExecutor`) and stops waiting after the tool's
``timeout_s``: the loop gets "timed out after 5.0 s" and goes on. The thread itself goes on
too: Python cannot kill a thread, so a pure-Python tool that hangs keeps its thread (and the
CPU it burns) until it returns, and the interpreter waits for it at exit. That is acceptable
for the short, trusted tools here (a calculator whose work is bounded, a date, a search) and
is why the tool that runs arbitrary code runs it in a process, which can be killed.
"""

from __future__ import annotations

import ast
import concurrent.futures
import copy
import datetime
import math
import numbers
import re
import time
from collections.abc import Callable
from dataclasses import dataclass

import jsonschema  # a dependency of nbformat, itself one of llmlab's

from llmlab.validate import require_positive_int

__all__ = [
    "MAX_OUTPUT_CHARS",
    "Tool",
    "ToolResult",
    "ToolError",
    "ToolRegistry",
    "calculator",
    "evaluate_arithmetic",
    "date_tool",
    "python_tool",
    "search_tool",
    "default_registry",
]

MAX_OUTPUT_CHARS = 2000  # longer outputs (and errors) are cut, with a note

_NAME = re.compile(r"[a-z_][a-z0-9_]*")


@dataclass(frozen=True)
class Tool:
    """One tool: its ``name`` (``[a-z_][a-z0-9_]*``), a one- or two-sentence ``description``
    shown to the model, ``parameters``, the JSON schema of its arguments (an object:
    ``{"type": "object", "properties": {...}, "required": [...], "additionalProperties":
    False}``), and ``fn``, called with the validated arguments as keyword arguments, which
    returns text. ``timeout_s``: how long :meth:`ToolRegistry.call` waits for it.

    ``fn`` reports a failure by raising; :class:`ToolError` for a message in plain words (it
    reaches the model as it is), any other exception as ``"TypeName: message"``.
    """

    name: str
    description: str
    parameters: dict
    fn: Callable[..., str]
    timeout_s: float = 5.0


@dataclass(frozen=True)
class ToolResult:
    """What one call gave: ``ok`` and the tool's text ``output`` ('' on failure), or the
    ``error`` in plain words; ``seconds`` of wall-clock time, validation included."""

    ok: bool
    output: str
    error: str | None
    seconds: float


class ToolError(Exception):
    """A tool's failure in plain words; the registry reports its message without a type name."""


class ToolRegistry:
    """The tools an agent may call, by name; :meth:`call` validates, runs and never raises.

    >>> registry = ToolRegistry()
    >>> tool = registry.register(calculator())
    >>> registry.describe()
    'calculator(expression: string): Evaluate an arithmetic expression exactly, ...'
    >>> registry.call("calculator", {"expression": "2 ** 10"}).output
    '1024'
    """

    def __init__(self) -> None:
        self._tools: dict[str, Tool] = {}
        self._validators: dict[str, jsonschema.protocols.Validator] = {}

    def register(self, tool: Tool) -> Tool:
        """Add ``tool`` and return it. ValueError on a duplicate name, a name that is not
        ``[a-z_][a-z0-9_]*``, an empty description, a timeout that is not a number > 0, or
        parameters that are not a valid JSON schema (Draft 2020-12) of an object."""
        if not isinstance(tool, Tool):
            raise TypeError(f"tool: expected a Tool, got {type(tool).__name__}")
        name = tool.name
        if not isinstance(name, str) or not _NAME.fullmatch(name):
            raise ValueError(
                f"tool.name: expected [a-z_][a-z0-9_]* (e.g. 'web_search'), got {name!r}"
            )
        if name in self._tools:
            raise ValueError(f"tool.name: a tool named {name!r} is registered already")
        if not isinstance(tool.description, str) or not tool.description.strip():
            raise ValueError(f"tool.description of {name!r}: expected a non-empty string")
        if not callable(tool.fn):
            raise ValueError(f"tool.fn of {name!r}: expected a callable, got {tool.fn!r}")
        timeout = tool.timeout_s
        if (
            isinstance(timeout, bool)
            or not isinstance(timeout, numbers.Real)
            or not math.isfinite(timeout)
            or timeout <= 0
        ):
            raise ValueError(f"tool.timeout_s of {name!r}: expected a number > 0, got {timeout!r}")
        validator = _check_parameters(name, tool.parameters)
        self._tools[name] = tool
        self._validators[name] = validator
        return tool

    def get(self, name: str) -> Tool:
        """The tool called ``name``; KeyError, listing the known names, if there is none."""
        try:
            return self._tools[name]
        except (KeyError, TypeError):  # TypeError: an unhashable name
            raise KeyError(self._unknown(name)) from None

    def names(self) -> list[str]:
        """The tools' names, in the order they were registered."""
        return list(self._tools)

    def __contains__(self, name: object) -> bool:
        return name in self._tools

    def __len__(self) -> int:
        return len(self._tools)

    def describe(self) -> str:
        """The tools for a prompt, one a line: ``name(arg: type, ...): description``; an
        optional argument is written ``arg?: type``."""
        lines = []
        for tool in self._tools.values():
            properties = tool.parameters.get("properties", {})
            required = set(tool.parameters.get("required", []))
            args = []
            for arg, schema in properties.items():
                kind = schema.get("type", "any") if isinstance(schema, dict) else "any"
                kind = " | ".join(kind) if isinstance(kind, list) else kind
                args.append(f"{arg}{'' if arg in required else '?'}: {kind}")
            description = " ".join(tool.description.split())
            lines.append(f"{tool.name}({', '.join(args)}): {description}")
        return "\n".join(lines)

    def schemas(self) -> list[dict]:
        """OpenAI-style function specs, ``[{"name", "description", "parameters"}]`` (copies)."""
        return [
            {
                "name": tool.name,
                "description": tool.description,
                "parameters": copy.deepcopy(tool.parameters),
            }
            for tool in self._tools.values()
        ]

    def call(self, name: str, arguments) -> ToolResult:
        """Validate ``arguments`` (a dict) against the tool's schema, run the tool in a worker
        thread for at most its ``timeout_s``, and return what happened. Never raises (but for
        KeyboardInterrupt): every failure is ``ok=False`` with the error in plain words."""
        start = time.perf_counter()

        def failed(error: str) -> ToolResult:
            return ToolResult(False, "", _cut(error), time.perf_counter() - start)

        try:
            tool = self._tools[name]
        except (KeyError, TypeError):
            return failed(self._unknown(name))
        if not isinstance(arguments, dict):
            return failed(
                f"arguments: expected a JSON object (a dict of argument names to values), got "
                f"{type(arguments).__name__} {_short(repr(arguments))}"
            )
        problems = sorted(
            self._validators[name].iter_errors(arguments), key=lambda e: (list(e.path), e.message)
        )
        if problems:
            return failed("; ".join(_schema_error(problem) for problem in problems))
        executor = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix=f"tool-{name}")
        try:
            future = executor.submit(tool.fn, **arguments)
            output = future.result(timeout=tool.timeout_s)
        except concurrent.futures.TimeoutError:
            return failed(f"timed out after {float(tool.timeout_s)} s")
        except ToolError as err:
            return failed(str(err))
        except (Exception, SystemExit) as err:
            message = str(err)
            return failed(f"{type(err).__name__}: {message}" if message else type(err).__name__)
        finally:
            executor.shutdown(wait=False, cancel_futures=True)  # a hung thread keeps running
        if not isinstance(output, str):
            return failed(f"tool {name!r} returned {type(output).__name__}, expected str")
        return ToolResult(True, _cut(output), None, time.perf_counter() - start)

    def _unknown(self, name: object) -> str:
        known = ", ".join(self._tools) or "none"
        return f"unknown tool {_short(repr(name))}; known: {known}"


def _check_parameters(name: str, parameters: object) -> jsonschema.protocols.Validator:
    """A validator for ``parameters``, after checking that it is a Draft 2020-12 JSON schema
    of an object whose required arguments are among its properties."""
    where = f"tool.parameters of {name!r}"
    if not isinstance(parameters, dict):
        raise ValueError(
            f"{where}: expected a JSON schema (a dict), got {type(parameters).__name__}"
        )
    try:
        jsonschema.Draft202012Validator.check_schema(parameters)
    except jsonschema.SchemaError as err:
        path = "".join(f"[{p!r}]" for p in err.path)
        raise ValueError(f"{where}{path}: not a valid JSON schema: {err.message}") from None
    if parameters.get("type") != "object":
        raise ValueError(f"{where}: expected {{'type': 'object', ...}}, got {parameters!r}")
    properties = parameters.get("properties", {})
    missing = [arg for arg in parameters.get("required", []) if arg not in properties]
    if missing:
        raise ValueError(f"{where}: required arguments {missing} are not among its properties")
    return jsonschema.Draft202012Validator(parameters)


def _schema_error(error: jsonschema.ValidationError) -> str:
    """One schema violation as text: ``arguments: ...`` or ``arguments['days']: ...``."""
    path = "".join(f"[{p!r}]" for p in error.absolute_path)
    return f"arguments{path}: {_short(error.message, 300)}"


def _short(text: str, limit: int = 80) -> str:
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _cut(text: str) -> str:
    if len(text) <= MAX_OUTPUT_CHARS:
        return text
    return (
        f"{text[:MAX_OUTPUT_CHARS]}\n[... cut: {len(text):,} characters in all, "
        f"the first {MAX_OUTPUT_CHARS:,} shown]"
    )


# ---------------------------------------------------------------------------------------------
# The calculator: arithmetic from a syntax tree, never from eval.

_FUNCTIONS: dict[str, tuple[Callable, int, int | None]] = {
    # name: (function, fewest arguments, most arguments; None: any number)
    "abs": (abs, 1, 1),
    "round": (round, 1, 2),
    "min": (min, 2, None),
    "max": (max, 2, None),
    "sqrt": (math.sqrt, 1, 1),
    "floor": (math.floor, 1, 1),
    "ceil": (math.ceil, 1, 1),
}
_BINARY = {
    ast.Add: (lambda a, b: a + b, "+"),
    ast.Sub: (lambda a, b: a - b, "-"),
    ast.Mult: (lambda a, b: a * b, "*"),
    ast.Div: (lambda a, b: a / b, "/"),
    ast.FloorDiv: (lambda a, b: a // b, "//"),
    ast.Mod: (lambda a, b: a % b, "%"),
    ast.Pow: (lambda a, b: a**b, "**"),
}
_ALLOWED = "only numbers, + - * / // % ** and abs, round, min, max, sqrt, floor, ceil are allowed"
MAX_EXPRESSION_CHARS = 500
MAX_EXPONENT = 1000
MAX_DIGITS = 1000


def evaluate_arithmetic(expression: str) -> int | float:
    """The value of an arithmetic ``expression``, computed by walking its syntax tree.

    Allowed: int and float literals, + - * / // % ** (with Python's precedence: ** binds
    tighter than unary minus and groups right to left, so ``-2 ** 2 == -4`` and
    ``2 ** 3 ** 2 == 512``), unary + and -, parentheses, and calls of abs, round, min, max,
    sqrt, floor, ceil. Any other node (a name, an attribute, a subscript, a string, a lambda, a
    comprehension ...) raises :class:`ToolError` naming it, before anything is computed. So
    does work that could take long or fill memory: an exponent over 1,000, an integer of more
    than 1,000 digits, an expression of more than 500 characters. Python's own errors pass
    through (``1 / 0``: ZeroDivisionError; ``sqrt(-1)``: ValueError).
    """
    if not isinstance(expression, str):
        raise ToolError(f"expression: expected a string, got {type(expression).__name__}")
    if len(expression) > MAX_EXPRESSION_CHARS:
        raise ToolError(
            f"expression: at most {MAX_EXPRESSION_CHARS} characters, got {len(expression)}"
        )
    try:
        tree = ast.parse(expression.strip(), mode="eval")  # a tree only: nothing runs
    except SyntaxError as err:
        raise ToolError(f"not an arithmetic expression: {err.msg} in {expression!r}") from None
    except (RecursionError, MemoryError):
        raise ToolError("the expression is nested too deeply") from None
    _refuse_all_but_arithmetic(tree)
    try:
        value = _evaluate(tree.body)
    except RecursionError:
        raise ToolError("the expression is nested too deeply") from None
    if isinstance(value, complex):
        raise ToolError(f"the result is a complex number, {value}; only real results are allowed")
    if isinstance(value, float) and not math.isfinite(value):
        raise ToolError(f"the result is not a finite number ({value})")
    return value


def _refuse_all_but_arithmetic(tree: ast.Expression) -> None:
    """Look at every node before computing anything: one foreign node refuses the lot."""
    for node in ast.walk(tree):
        if isinstance(node, ast.Constant):
            value = node.value
            if isinstance(value, bool) or not isinstance(value, int | float):
                raise ToolError(f"{_ALLOWED}; got {_name_node(node)}")
        elif isinstance(node, ast.BinOp):
            if type(node.op) not in _BINARY:
                raise ToolError(f"{_ALLOWED}; got the operator {_OPERATORS.get(type(node.op))}")
        elif isinstance(node, ast.UnaryOp):
            if not isinstance(node.op, ast.UAdd | ast.USub):
                raise ToolError(f"{_ALLOWED}; got the operator {_OPERATORS.get(type(node.op))}")
        elif isinstance(node, ast.Call):
            if not isinstance(node.func, ast.Name) or node.func.id not in _FUNCTIONS:
                raise ToolError(f"{_ALLOWED}; got a call of {_name_node(node.func)}")
            if node.keywords or any(isinstance(arg, ast.Starred) for arg in node.args):
                raise ToolError(f"{node.func.id}(): only plain arguments, no * or name=")
            fn, fewest, most = _FUNCTIONS[node.func.id]
            count = len(node.args)
            if count < fewest or (most is not None and count > most):
                wanted = f"{fewest}" if fewest == most else f"{fewest} to {most}"
                wanted = f"at least {fewest}" if most is None else wanted
                raise ToolError(f"{node.func.id}() takes {wanted} arguments, got {count}")
        elif isinstance(node, ast.Name):
            # Only as the function of an allowed call (checked above); a bare name is refused.
            if not _is_called(tree, node):
                raise ToolError(f"{_ALLOWED}; got {_name_node(node)}")
        elif not isinstance(node, ast.Expression | ast.operator | ast.unaryop | ast.Load):
            raise ToolError(f"{_ALLOWED}; got {_name_node(node)}")


def _is_called(tree: ast.AST, name: ast.Name) -> bool:
    return any(isinstance(n, ast.Call) and n.func is name for n in ast.walk(tree))


_OPERATORS = {
    ast.LShift: "<<",
    ast.RShift: ">>",
    ast.BitOr: "|",
    ast.BitXor: "^",
    ast.BitAnd: "&",
    ast.MatMult: "@",
    ast.Invert: "~",
    ast.Not: "not",
}


def _name_node(node: ast.AST) -> str:
    """A node in words, for an error: "a Name 'os'", "an Attribute '.system'", "a string"."""
    if isinstance(node, ast.Name):
        return f"a Name {node.id!r}"
    if isinstance(node, ast.Attribute):
        return f"an Attribute '.{node.attr}'"
    if isinstance(node, ast.Constant):
        kind = {str: "string", bytes: "bytes", bool: "bool", complex: "complex number"}
        return f"a {kind.get(type(node.value), type(node.value).__name__)} {node.value!r}"[:80]
    kind = type(node).__name__
    return f"{'an' if kind[0] in 'AEIOU' else 'a'} {kind}"


def _evaluate(node: ast.AST) -> int | float:
    if isinstance(node, ast.Constant):
        return _bounded(node.value)
    if isinstance(node, ast.UnaryOp):
        value = _evaluate(node.operand)
        return -value if isinstance(node.op, ast.USub) else +value
    if isinstance(node, ast.BinOp):
        left, right = _evaluate(node.left), _evaluate(node.right)
        if isinstance(node.op, ast.Pow):
            _check_power(left, right)
        return _bounded(_BINARY[type(node.op)][0](left, right))
    if isinstance(node, ast.Call):
        fn = _FUNCTIONS[node.func.id][0]
        args = [_evaluate(arg) for arg in node.args]
        if fn is round and len(args) == 2 and not isinstance(args[1], int):
            raise ToolError(f"round(): the number of digits must be an integer, got {args[1]}")
        return _bounded(fn(*args))
    raise ToolError(f"{_ALLOWED}; got {_name_node(node)}")  # unreachable after the check


def _check_power(base: int | float, exponent: int | float) -> None:
    """Refuse a power before computing it if it is too much work: 10 ** 10 ** 10 would run for
    hours and fill memory, and an exponent of 1,000 on a large integer base nearly as long."""
    if abs(exponent) > MAX_EXPONENT:
        raise ToolError(f"exponent {exponent} is over {MAX_EXPONENT:,}: too much work")
    if isinstance(base, int) and isinstance(exponent, int) and abs(base) > 1 and exponent > 0:
        digits = exponent * math.log10(abs(base))
        if digits > MAX_DIGITS:
            raise ToolError(
                f"{_short(str(base), 30)} ** {exponent} would have about {digits:,.0f} digits; "
                f"at most {MAX_DIGITS:,} are allowed"
            )


def _bounded(value: int | float) -> int | float:
    """``value``, if its integer part has at most MAX_DIGITS digits; else ToolError."""
    if isinstance(value, int) and value.bit_length() * math.log10(2) > MAX_DIGITS:
        raise ToolError(f"the result has more than {MAX_DIGITS:,} digits")
    return value


def _format_number(value: int | float) -> str:
    """Ints as they are; floats rounded to 12 significant digits (0.1 + 0.2 gives '0.3')."""
    if isinstance(value, int):
        return str(value)
    return repr(float(f"{value:.12g}"))


def calculator() -> Tool:
    """The calculator tool: ``{"expression": "17 * 23"}`` -> ``'391'``; see
    :func:`evaluate_arithmetic` for what it accepts (and refuses)."""

    def run(expression: str) -> str:
        return _format_number(evaluate_arithmetic(expression))

    return Tool(
        name="calculator",
        description=(
            "Evaluate an arithmetic expression exactly, e.g. '(17 * 23) / 4' or 'sqrt(2) ** 3'. "
            "Numbers, + - * / // % ** and parentheses, and abs, round, min, max, sqrt, floor, "
            "ceil; nothing else."
        ),
        parameters={
            "type": "object",
            "properties": {
                "expression": {"type": "string", "description": "the arithmetic expression"}
            },
            "required": ["expression"],
            "additionalProperties": False,
        },
        fn=run,
        timeout_s=5.0,
    )


# ---------------------------------------------------------------------------------------------
# Dates: the model does not know today's date, and counts days badly.

_OPERATIONS = ("today", "add_days", "days_between", "weekday")


def date_tool(today: datetime.date | None = None) -> Tool:
    """The date tool. ``operation`` is one of:

    - ``today``: today's date, ISO ("2025-03-14"); the fixed ``today`` when one is given (a task
      that mentions "today" then has the same answer every run), else the machine's date;
    - ``add_days``: ``date`` plus ``days`` (negative: earlier), ISO;
    - ``days_between``: ``other_date`` minus ``date`` in days (negative if it is earlier);
    - ``weekday``: the English name of ``date``'s day of the week ("Friday").

    Dates are ISO strings (YYYY-MM-DD). An operation without the argument it needs is an error
    that names the argument.
    """
    if isinstance(today, datetime.datetime):
        today = today.date()
    if today is not None and not isinstance(today, datetime.date):
        raise TypeError(f"today: expected a datetime.date or None, got {today!r}")

    def parse(text: str, name: str) -> datetime.date:
        try:
            return datetime.date.fromisoformat(text)
        except ValueError as err:
            raise ToolError(f"{name}: {text!r} is not an ISO date (YYYY-MM-DD): {err}") from None

    def needs(operation: str, value: object, name: str, what: str) -> None:
        if value is None:
            raise ToolError(f"operation {operation!r} needs the argument {name!r} ({what})")

    def run(
        operation: str,
        date: str | None = None,
        other_date: str | None = None,
        days: int | None = None,
    ) -> str:
        if operation == "today":
            return (today or datetime.date.today()).isoformat()
        needs(operation, date, "date", "an ISO date, YYYY-MM-DD")
        start = parse(date, "date")
        if operation == "weekday":
            return start.strftime("%A")
        if operation == "add_days":
            needs(operation, days, "days", "an integer")
            try:
                return (start + datetime.timedelta(days=int(days))).isoformat()
            except OverflowError:
                raise ToolError(f"{date} + {days} days is outside years 1 to 9999") from None
        if operation == "days_between":
            needs(operation, other_date, "other_date", "an ISO date, YYYY-MM-DD")
            return str((parse(other_date, "other_date") - start).days)
        raise ToolError(f"operation: expected one of {', '.join(_OPERATIONS)}, got {operation!r}")

    return Tool(
        name="date",
        description=(
            "Dates (ISO, YYYY-MM-DD). operation 'today': today's date; 'add_days': date plus days; "
            "'days_between': days from date to other_date; 'weekday': the day of the week of date."
        ),
        parameters={
            "type": "object",
            "properties": {
                "operation": {"type": "string", "enum": list(_OPERATIONS)},
                "date": {"type": "string", "description": "an ISO date, YYYY-MM-DD"},
                "other_date": {"type": "string", "description": "an ISO date, YYYY-MM-DD"},
                "days": {"type": "integer", "description": "days to add (negative: earlier)"},
            },
            "required": ["operation"],
            "additionalProperties": False,
        },
        fn=run,
        timeout_s=5.0,
    )


# ---------------------------------------------------------------------------------------------
# Python, in the course's sandbox.


def python_tool(timeout_s: float = 10.0, memory_mb: int = 512) -> Tool:
    """The Python tool: runs ``code`` with :func:`llmlab.sandbox.run_python` and returns what it
    printed.

    Each call is a fresh process in a fresh temporary directory (nothing carries over from one
    call to the next), with ``timeout_s`` of wall-clock time and as much CPU time, ``memory_mb``
    of address space, 64 processes and threads, and 16 MB per written file. Where Linux user
    namespaces work (``sandbox.isolation().namespaces``), it also has no network, a read-only
    filesystem but for its directory and a private /tmp, and the grader's secrets hidden. Where
    they do not (many containers, macOS, Windows), the sandbox runs it as a plain subprocess
    with those limits only (and a RuntimeWarning saying so, once per process): the description
    the model reads then promises no isolation. The registry waits ``timeout_s + 10`` s: the
    sandbox's own wall-clock limit kills the process first, and the tool reports it.

    A non-zero exit is an error with the last lines of stderr (the traceback's end).
    """
    from llmlab import sandbox

    if (
        isinstance(timeout_s, bool)
        or not isinstance(timeout_s, numbers.Real)
        or not math.isfinite(timeout_s)
        or timeout_s <= 0
    ):
        raise ValueError(f"timeout_s: expected a number > 0, got {timeout_s!r}")
    memory_mb = require_positive_int(memory_mb, "memory_mb")
    limits = sandbox.Limits(
        wall_s=float(timeout_s),
        cpu_s=float(timeout_s),
        memory_mb=memory_mb,
        processes=64,
        file_mb=16,
    )
    isolated = sandbox.isolation().namespaces

    def run(code: str) -> str:
        done = sandbox.run_python(code, limits=limits)
        # The sandbox's temporary directory means nothing to the model and differs every run:
        # a traceback says 'File "snippet.py"', not the machine's path to it.
        stdout = _SANDBOX_DIR.sub("", done.stdout.decode("utf-8", errors="replace"))
        stderr = _SANDBOX_DIR.sub("", done.stderr.decode("utf-8", errors="replace"))
        if done.timed_out:
            raise ToolError(
                f"timed out after {float(timeout_s)} s (killed){_tail(stdout, 'stdout')}"
            )
        if done.returncode < 0:
            raise ToolError(f"killed by {_signal_name(-done.returncode)}{_tail(stderr, 'stderr')}")
        if done.returncode != 0:
            raise ToolError(f"exit status {done.returncode}{_tail(stderr, 'stderr')}")
        stdout = stdout.rstrip()
        return stdout if stdout else "(no output: print() what you want to see)"

    where = (
        "in a sandbox: no network, a fresh temporary directory"
        if isolated
        else "in a subprocess (this machine cannot isolate it), in a fresh temporary directory"
    )
    return Tool(
        name="python",
        description=(
            f"Run Python 3 code {where}, at most {float(timeout_s):g} s and {memory_mb} MB; "
            "returns what it prints, so print() the result. Nothing persists between calls."
        ),
        parameters={
            "type": "object",
            "properties": {"code": {"type": "string", "description": "a Python 3 program"}},
            "required": ["code"],
            "additionalProperties": False,
        },
        fn=run,
        timeout_s=float(timeout_s) + 10.0,
    )


_SANDBOX_DIR = re.compile(r"/[^\s\"']*?llmlab-sandbox-[\w-]+/")


def _tail(text: str, what: str, lines: int = 8) -> str:
    kept = text.strip().splitlines()[-lines:]
    return f"; {what}, last lines:\n" + "\n".join(kept) if kept else ""


def _signal_name(number: int) -> str:
    import signal

    try:
        name = signal.Signals(number).name
    except ValueError:
        return f"signal {number}"
    why = {"SIGXCPU": " (CPU time limit)", "SIGKILL": " (a limit, or the out-of-memory killer)"}
    return name + why.get(name, "")


# ---------------------------------------------------------------------------------------------
# Search over a knowledge base.


def search_tool(
    search: Callable[[str, int], list[tuple[str, str]]],
    k: int = 3,
    name: str = "search",
    description: str = (
        "Search the knowledge base; returns the passages that best match the query, each with "
        "the id of its document."
    ),
) -> Tool:
    """A tool over any retriever: ``search(query, k)`` returns up to ``k`` ``(doc_id, text)``
    pairs, best first (BM25, dense, hybrid: see :mod:`llmlab.rag`). The tool returns them as
    numbered lines, ``[1] (doc_id) text``, each passage's whitespace collapsed to one line, so
    the model can cite them."""
    if not callable(search):
        raise TypeError(
            f"search: expected a callable (query, k) -> [(doc_id, text)], got {search!r}"
        )
    k = require_positive_int(k, "k")

    def run(query: str) -> str:
        hits = list(search(query, k))[:k]
        if not hits:
            return f"no passages found for {query!r}"
        lines = []
        for rank, hit in enumerate(hits, 1):
            doc_id, text = hit
            lines.append(f"[{rank}] ({doc_id}) {' '.join(str(text).split())}")
        return "\n".join(lines)

    return Tool(
        name=name,
        description=description,
        parameters={
            "type": "object",
            "properties": {
                "query": {"type": "string", "minLength": 1, "description": "what to look for"}
            },
            "required": ["query"],
            "additionalProperties": False,
        },
        fn=run,
        timeout_s=10.0,
    )


def default_registry(
    search: Callable[[str, int], list[tuple[str, str]]] | None = None,
    today: datetime.date | None = None,
) -> ToolRegistry:
    """A registry with the calculator, the date tool (``today`` fixed if given), Python in the
    sandbox, and ``search`` as a search tool if one is given."""
    registry = ToolRegistry()
    registry.register(calculator())
    registry.register(date_tool(today))
    registry.register(python_tool())
    if search is not None:
        registry.register(search_tool(search))
    return registry
