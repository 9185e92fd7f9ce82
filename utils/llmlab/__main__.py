"""``python -m llmlab COMMAND``: the course's command line (:mod:`llmlab.course.cli`)."""

import sys

from llmlab.course.cli import main

if __name__ == "__main__":
    sys.exit(main())
