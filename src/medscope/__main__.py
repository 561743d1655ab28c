import sys

from medscope.cli import main

sys.exit(main())
