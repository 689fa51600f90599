"""``python -m restrained``: see :mod:`restrained.cli`."""

import sys

from restrained.cli import main

sys.exit(main())
