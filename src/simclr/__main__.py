"""``python -m simclr ...`` works exactly like the ``simclr`` console script (torchrun launches it this way)."""

import sys

from .cli import main

sys.exit(main())
