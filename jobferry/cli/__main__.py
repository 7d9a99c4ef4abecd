"""``python -m jobferry.cli``."""

from __future__ import annotations

import sys

from jobferry.cli import main

sys.exit(main())
