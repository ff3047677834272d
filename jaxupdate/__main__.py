"""``python -m jaxupdate parity``: see :mod:`jaxupdate.cli`."""

import sys

from jaxupdate.cli import main

if __name__ == "__main__":
    sys.exit(main())
