"""The course's command line: ``python -m llmlab COMMAND`` (or ``llmlab COMMAND``).

doctor                  what this machine has; exit status 1 when the course can't run
assets fetch [KEY...]   download and prepare the offline models
assets status           which assets are ready, and where
labs [--check]          regenerate labs/ and the README's chapter map (or check them)
grade PATH... [...]     grade students' lab notebooks (see: python -m llmlab grade --help)
selfcheck NOTEBOOK      the grader's verdict on your own lab notebook
"""

from __future__ import annotations

import sys

USAGE = __doc__.split("\n\n", 1)[1]


def main(argv: list[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if not args or args[0] in ("-h", "--help", "help"):
        print("usage: python -m llmlab COMMAND\n\n" + USAGE)
        return 0 if args else 2
    command, rest = args[0], args[1:]
    if command == "doctor":
        from llmlab.course.doctor import doctor

        report = doctor()
        print(report)
        return 0 if report.ok else 1
    if command == "assets":
        return _assets(rest)
    if command == "labs":
        return _labs(rest)
    if command == "grade":
        from llmlab.course import grading

        return grading.main(rest)
    if command == "selfcheck":
        from llmlab.course import grading

        return grading.self_check(rest)
    print(f"unknown command {command!r}\n\n{USAGE}", file=sys.stderr)
    return 2


def _labs(args: list[str]) -> int:
    """Regenerate labs/ from solutions/, then the README's chapter map (it lists the labs)."""
    from llmlab import course
    from llmlab.course import labs

    status = labs.main(args)
    root = course.repo_root()
    if status == 0 and root is not None:
        stale = course.update_readme(root, check="--check" in args)
        if stale and "--check" in args:
            print("README.md: the chapter map is out of date (run: make labs)")
            return 1
    return status


def _assets(args: list[str]) -> int:
    from llmlab import assets

    if args[:1] == ["fetch"]:
        try:
            assets.fetch(args[1:] or None)
        except (assets.AssetMissingError, ValueError) as err:
            print(err, file=sys.stderr)
            return 1
        return 0
    if args[:1] == ["status"]:
        missing = 0
        for key, asset in assets.ASSETS.items():
            path = assets.cached_path(key)
            missing += path is None
            print(f"{key:<8} {'ready at ' + str(path) if path else 'missing'}  ({asset.title})")
        return 1 if missing else 0
    print("usage: python -m llmlab assets fetch [KEY...] | assets status", file=sys.stderr)
    return 2
