"""llmlab.agents.tools: the registry never raises, the calculator never evals, the tools work."""

from __future__ import annotations

import datetime
import time

import jsonschema
import pytest

from llmlab.agents.tools import (
    MAX_OUTPUT_CHARS,
    Tool,
    ToolError,
    ToolRegistry,
    ToolResult,
    calculator,
    date_tool,
    default_registry,
    evaluate_arithmetic,
    python_tool,
    search_tool,
)

TODAY = datetime.date(2025, 3, 14)  # a Friday


def _tool(name="echo", fn=None, timeout_s=5.0, parameters=None):
    return Tool(
        name=name,
        description="Echo the text back.",
        parameters=parameters
        or {
            "type": "object",
            "properties": {"text": {"type": "string"}, "times": {"type": "integer"}},
            "required": ["text"],
            "additionalProperties": False,
        },
        fn=fn or (lambda text, times=1: text * times),
        timeout_s=timeout_s,
    )


@pytest.fixture
def registry():
    registry = ToolRegistry()
    registry.register(calculator())
    registry.register(date_tool(TODAY))
    return registry


def _calc(registry, expression):
    result = registry.call("calculator", {"expression": expression})
    assert isinstance(result, ToolResult)
    return result


# --- calculator ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("expression", "expected"),
    [
        ("17 * 23", "391"),
        ("1 + 2 * 3", "7"),
        ("(1 + 2) * 3", "9"),
        ("-2 ** 2", "-4"),  # ** binds tighter than unary minus
        ("2 ** 3 ** 2", "512"),  # and groups right to left
        ("-(-3) + +4", "7"),
        ("7 / 2", "3.5"),
        ("7 // 2", "3"),
        ("-7 % 3", "2"),
        ("0.1 + 0.2", "0.3"),  # 12 significant digits
        ("1.5e3 * 2", "3000.0"),
        ("2 ** -2", "0.25"),
        ("sqrt(16)", "4.0"),
        ("sqrt(2)", "1.41421356237"),
        ("abs(-5) + floor(2.7) + ceil(2.1)", "10"),
        ("round(2.567, 2)", "2.57"),
        ("min(3, 1, 2) + max(4, 9)", "10"),
        ("2 ** 10", "1024"),
        ("2 ** 1000 // 2 ** 999", "2"),
    ],
)
def test_calculator_values(registry, expression, expected):
    result = _calc(registry, expression)
    assert result == ToolResult(True, expected, None, result.seconds)


def test_calculator_python_errors_come_back_as_results(registry):
    assert _calc(registry, "1 / 0").error == "ZeroDivisionError: division by zero"
    assert _calc(registry, "sqrt(-1)").error == "ValueError: math domain error"
    assert "complex" in _calc(registry, "(-8) ** (1 / 3)").error
    assert "finite" in _calc(registry, "1e308 * 10").error
    assert "invalid syntax" in _calc(registry, "1 +").error
    assert "at least 2" in _calc(registry, "min(1)").error


@pytest.mark.parametrize(
    ("expression", "named"),
    [
        ("__import__('os').system('ls')", "Attribute '.system'"),
        ("__import__('os')", "call of a Name '__import__'"),
        ("os", "Name 'os'"),
        ("a.b", "Attribute '.b'"),
        ("[1][0]", "Subscript"),
        ("'a' * 3", "string 'a'"),
        ("lambda: 1", "Lambda"),
        ("[x for x in (1, 2)]", "ListComp"),
        ("(1).__class__", "Attribute '.__class__'"),
        ("sqrt", "Name 'sqrt'"),  # a function is only allowed when called
        ("1 << 3", "operator <<"),
        ("1 < 2", "Compare"),
        ("True + 1", "bool True"),
        ("eval('1')", "call of a Name 'eval'"),
    ],
)
def test_calculator_refuses_all_but_arithmetic(registry, expression, named):
    result = _calc(registry, expression)
    assert not result.ok and result.output == ""
    assert result.error.startswith("only numbers, + - * / // % ** and abs, round, min, max, ")
    assert named in result.error


def test_calculator_never_executes(monkeypatch, tmp_path):
    import builtins

    def trap(*args, **kwargs):
        raise AssertionError("the calculator called eval or exec")

    for name in ("eval", "exec"):
        monkeypatch.setattr(builtins, name, trap)
    target = tmp_path / "pwned"
    for expression in (
        f"open({str(target)!r}, 'w')",
        f"__import__('pathlib').Path({str(target)!r}).touch()",
        f"[open({str(target)!r}, 'w')][0]",
        f"1 + (lambda: open({str(target)!r}, 'w'))()",
    ):
        with pytest.raises(ToolError, match="only numbers"):
            evaluate_arithmetic(expression)
    assert not target.exists()
    assert evaluate_arithmetic("2 * (3 + 4)") == 14


@pytest.mark.parametrize(
    "expression", ["2 ** 100000", "(10 ** 999) ** 2", "10 ** 999 * 10 ** 999", "9 ** 9 ** 9"]
)
def test_calculator_refuses_huge_work_quickly(registry, expression):
    start = time.perf_counter()
    result = _calc(registry, expression)
    assert not result.ok and ("exponent" in result.error or "digits" in result.error)
    assert len(result.error) < 200
    assert time.perf_counter() - start < 1.0


def test_calculator_refuses_long_or_deep_expressions(registry):
    assert "characters" in _calc(registry, "1+" * 400 + "1").error
    for depth in (50, 249):  # Python's parser caps nesting; past the cap, a SyntaxError
        deep = _calc(registry, "(" * depth + "-1" + ")" * depth)
        assert deep.output == "-1" or "not an arithmetic expression" in deep.error
    assert _calc(registry, "-" * 300 + "1").output == "1"


# --- registry --------------------------------------------------------------------------------


def test_register_refuses_duplicates_bad_names_and_bad_schemas():
    registry = ToolRegistry()
    tool = _tool()
    assert registry.register(tool) is tool
    with pytest.raises(ValueError, match="registered already"):
        registry.register(_tool())
    for name in ("Echo", "2echo", "web-search", "", "a b"):
        with pytest.raises(ValueError, match="tool.name"):
            registry.register(_tool(name=name))
    bad_type = {"type": "object", "properties": {"x": {"type": "strin"}}}
    with pytest.raises(ValueError, match="not a valid JSON schema"):
        registry.register(_tool(name="bad", parameters=bad_type))
    with pytest.raises(ValueError, match="not a valid JSON schema"):
        registry.register(_tool(name="bad", parameters={"type": "object", "required": "x"}))
    with pytest.raises(ValueError, match="'type': 'object'"):
        registry.register(_tool(name="bad", parameters={"type": "string"}))
    with pytest.raises(ValueError, match="not among its properties"):
        registry.register(_tool(name="bad", parameters={"type": "object", "required": ["x"]}))
    with pytest.raises(ValueError, match="timeout_s"):
        registry.register(_tool(name="bad", timeout_s=0))
    assert registry.names() == ["echo"]


def test_get_and_unknown_tools(registry):
    assert registry.get("calculator").name == "calculator"
    with pytest.raises(KeyError, match="known: calculator, date"):
        registry.get("serach")
    result = registry.call("serach", {"query": "x"})
    assert not result.ok and result.output == ""
    assert result.error == "unknown tool 'serach'; known: calculator, date"
    assert not registry.call(["not", "hashable"], {}).ok


@pytest.mark.parametrize("arguments", ['{"expression": "1"}', None, ["1 + 1"], 3])
def test_arguments_must_be_a_dict(registry, arguments):
    result = registry.call("calculator", arguments)
    assert not result.ok and result.error.startswith("arguments: expected a JSON object")


def test_schema_violations_are_reported_in_jsonschemas_words():
    registry = ToolRegistry()
    registry.register(_tool())
    missing = registry.call("echo", {})
    assert missing.error == "arguments: 'text' is a required property"
    extra = registry.call("echo", {"text": "a", "colour": "red"})
    assert "Additional properties are not allowed ('colour' was unexpected)" in extra.error
    wrong = registry.call("echo", {"text": 5})
    assert wrong.error == "arguments['text']: 5 is not of type 'string'"
    both = registry.call("echo", {"times": True})
    assert "'text' is a required property" in both.error
    assert "arguments['times']: True is not of type 'integer'" in both.error
    assert registry.call("echo", {"text": "ab", "times": 2}).output == "abab"


def test_a_tool_that_raises_is_a_result():
    registry = ToolRegistry()

    def broken(text, times=1):
        raise RuntimeError(f"cannot echo {text!r}")

    def plain(text, times=1):
        raise ToolError("plain words")

    registry.register(_tool("broken", broken))
    registry.register(_tool("plain", plain))
    registry.register(_tool("not_text", lambda text, times=1: 42))
    registry.register(_tool("exits", lambda text, times=1: exit(3)))
    assert registry.call("broken", {"text": "x"}).error == "RuntimeError: cannot echo 'x'"
    assert registry.call("plain", {"text": "x"}).error == "plain words"
    assert "returned int" in registry.call("not_text", {"text": "x"}).error
    assert registry.call("exits", {"text": "x"}).error == "SystemExit: 3"


def test_a_tool_past_its_timeout_is_abandoned():
    registry = ToolRegistry()
    registry.register(_tool("sleepy", lambda text, times=1: time.sleep(0.6) or text, 0.2))
    start = time.perf_counter()
    result = registry.call("sleepy", {"text": "x"})
    assert time.perf_counter() - start < 0.5
    assert result.error == "timed out after 0.2 s" and not result.ok
    assert 0.2 <= result.seconds < 0.5


def test_long_output_is_cut_with_a_note():
    registry = ToolRegistry()
    registry.register(_tool())
    result = registry.call("echo", {"text": "ab", "times": 5000})
    assert result.ok and result.output.startswith("ab" * (MAX_OUTPUT_CHARS // 2))
    assert "cut: 10,000 characters" in result.output
    assert len(result.output) < MAX_OUTPUT_CHARS + 100
    assert registry.call("echo", {"text": "ab", "times": 1000}).output == "ab" * 1000


def test_describe_and_schemas(registry):
    lines = registry.describe().splitlines()
    assert lines[0].startswith("calculator(expression: string): Evaluate an arithmetic")
    assert lines[1].startswith("date(operation: string, date?: string, other_date?: string, ")
    assert "days?: integer): " in lines[1]
    schemas = registry.schemas()
    assert [s["name"] for s in schemas] == ["calculator", "date"]
    for spec in schemas:
        assert set(spec) == {"name", "description", "parameters"}
        jsonschema.Draft202012Validator.check_schema(spec["parameters"])
        assert spec["parameters"]["additionalProperties"] is False
    schemas[0]["parameters"]["properties"].clear()  # a copy: the tool is unchanged
    assert registry.call("calculator", {"expression": "1 + 1"}).output == "2"


# --- date ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("arguments", "expected"),
    [
        ({"operation": "today"}, "2025-03-14"),
        ({"operation": "weekday", "date": "2025-03-14"}, "Friday"),
        ({"operation": "add_days", "date": "2025-02-27", "days": 2}, "2025-03-01"),
        ({"operation": "add_days", "date": "2024-02-27", "days": 2}, "2024-02-29"),
        ({"operation": "add_days", "date": "2025-01-01", "days": -1}, "2024-12-31"),
        ({"operation": "days_between", "date": "2025-03-14", "other_date": "2025-12-25"}, "286"),
        ({"operation": "days_between", "date": "2025-03-14", "other_date": "2025-03-01"}, "-13"),
    ],
)
def test_date_tool(registry, arguments, expected):
    result = registry.call("date", arguments)
    assert result.ok and result.output == expected


def test_date_tool_errors(registry):
    def error(**arguments):
        result = registry.call("date", arguments)
        assert not result.ok
        return result.error

    assert "'days'" in error(operation="add_days", date="2025-03-14")
    assert "'date'" in error(operation="weekday")
    assert "'other_date'" in error(operation="days_between", date="2025-03-14")
    assert "not an ISO date" in error(operation="weekday", date="2025-02-30")
    assert "not an ISO date" in error(operation="weekday", date="14/03/2025")
    assert "is not one of" in error(operation="tomorrow")
    assert "outside years" in error(operation="add_days", date="9999-12-31", days=1)
    assert ToolRegistry().register(date_tool()).fn(operation="today") == (
        datetime.date.today().isoformat()
    )


# --- search ----------------------------------------------------------------------------------


def test_search_tool_numbers_the_passages():
    asked = []

    def fake_search(query, k):
        asked.append((query, k))
        passages = [
            ("kb-7", "The Vashti  bridge\nopened in 1871."),
            ("kb-2", "It is red."),
            ("x", "y"),
        ]
        return passages[:k]

    registry = ToolRegistry()
    registry.register(search_tool(fake_search, k=2))
    result = registry.call("search", {"query": "Vashti bridge"})
    assert result.output == "[1] (kb-7) The Vashti bridge opened in 1871.\n[2] (kb-2) It is red."
    assert asked == [("Vashti bridge", 2)]
    assert not registry.call("search", {"query": ""}).ok  # minLength 1
    empty = ToolRegistry()
    empty.register(search_tool(lambda q, k: [], name="wiki", description="Search the wiki."))
    assert empty.call("wiki", {"query": "nothing"}).output == "no passages found for 'nothing'"
    with pytest.raises(ValueError, match="k"):
        search_tool(fake_search, k=0)


def test_default_registry():
    assert default_registry().names() == ["calculator", "date", "python"]
    registry = default_registry(search=lambda q, k: [("d", q)], today=TODAY)
    assert registry.names() == ["calculator", "date", "python", "search"]
    assert registry.call("date", {"operation": "today"}).output == "2025-03-14"
    assert registry.call("search", {"query": "q"}).output == "[1] (d) q"


# --- python, in the sandbox -------------------------------------------------------------------


@pytest.fixture(scope="module")
def python():
    registry = ToolRegistry()
    registry.register(python_tool(timeout_s=2.0, memory_mb=256))
    return registry


@pytest.mark.filterwarnings("ignore:Sandbox on:RuntimeWarning")  # machines without namespaces
def test_python_tool_runs_code_and_reports_failures(python):
    assert python.call("python", {"code": "print(6 * 7)"}).output == "42"
    assert "no output" in python.call("python", {"code": "x = 1"}).output
    failed = python.call("python", {"code": "print('partial')\n1 / 0"})
    assert not failed.ok and failed.error.startswith("exit status 1")
    assert "ZeroDivisionError: division by zero" in failed.error
    assert 'File "snippet.py", line 2' in failed.error and "llmlab-sandbox" not in failed.error
    memory = python.call("python", {"code": "x = bytearray(1024 ** 3)"})
    assert not memory.ok and "MemoryError" in memory.error


@pytest.mark.filterwarnings("ignore:Sandbox on:RuntimeWarning")
def test_python_tool_stops_an_infinite_loop(python):
    start = time.perf_counter()
    result = python.call("python", {"code": "while True:\n    pass"})
    assert not result.ok
    assert result.error.startswith(("timed out after 2.0 s", "killed by SIGXCPU", "killed by"))
    assert time.perf_counter() - start < 8
    tool = python.get("python")
    assert tool.timeout_s > 2.0  # the sandbox's own limit fires first
    assert "2 s" in tool.description and "256 MB" in tool.description
