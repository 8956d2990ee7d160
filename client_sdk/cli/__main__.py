"""`python -m client_sdk.cli` is the `keyrelay` command."""

import sys

from client_sdk.cli import main

sys.exit(main())
