"""``python -m sublim`` runs the command line."""

import sys

from sublim.cli import main

sys.exit(main())
