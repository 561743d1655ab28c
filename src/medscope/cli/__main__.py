"""``python -m medscope.cli``, as ``medscope`` and ``python -m medscope``."""

import sys

from medscope.cli import main

sys.exit(main())
