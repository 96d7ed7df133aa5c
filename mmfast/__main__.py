"""``python -m mmfast``: the ``mmfast`` command (as torchrun's ``-m mmfast`` runs it)."""

import sys

from mmfast.cli import main

sys.exit(main())
