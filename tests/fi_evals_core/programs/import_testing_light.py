"""Import fi_evals_core.testing and every module in it; print which heavy dependencies got loaded.

Prints `HEAVY <JSON list>`: must be empty (torch, transformers, tokenizers, rotel, triton load only
inside the builders that need them).
"""

import json
import sys

import fi_evals_core.testing  # noqa: F401
from fi_evals_core.testing import collector, hf_server, png, tiny_models, tiny_nli, triton_aot  # noqa: F401

print("HEAVY", json.dumps(sorted(m for m in ("torch", "transformers", "tokenizers", "rotel", "triton")
                                 if m in sys.modules)))
