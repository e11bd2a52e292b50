"""register() with nothing but the environment: a bad value must stop it with a clear error."""

from fi_evals_core import register

register()
