"""``python -m esmtune`` (what ``accelerate launch -m esmtune`` runs)."""

import sys

from esmtune.cli import main

if __name__ == "__main__":
    sys.exit(main())
