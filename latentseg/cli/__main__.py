"""``python -m latentseg.cli ...``: the ``latentseg`` command."""

import sys

from latentseg.cli import main

sys.exit(main())
