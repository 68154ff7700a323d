"""`python -m sona_store`: the same as the `sona-store` command."""

import sys

from sona_store.cli.main import main

if __name__ == "__main__":
    sys.exit(main())
