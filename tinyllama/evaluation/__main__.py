"""``python -m tinyllama.evaluation {run,perplexity,suites} ...``"""

import sys

from .cli import main

sys.exit(main())
