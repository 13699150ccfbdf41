"""``python -m relative_performer`` runs the ``relative-performer`` command."""

import sys

from relative_performer.cli import main

if __name__ == "__main__":
    sys.exit(main())
