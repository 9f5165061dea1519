"""`python -m moefast.cli`: the ``moefast`` command."""

import sys

from moefast.cli import main

sys.exit(main())
