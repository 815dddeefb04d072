"""``python -m bioprop`` (and ``torchrun -m bioprop``): the command line."""

import sys

from bioprop.cli import main

sys.exit(main())
