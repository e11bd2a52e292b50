"""`python -m fi_evals_core.evals`: the `fi-evals` command."""

import sys

from .cli import main

sys.exit(main())
