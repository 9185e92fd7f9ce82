"""``python -m llmlab.bench``: the harness's command line (see :func:`llmlab.bench.main`)."""

import sys

from llmlab.bench import main

sys.exit(main())
