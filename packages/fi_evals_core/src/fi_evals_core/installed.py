"""Which of this project's packages are installed, and whether they are this project's.

The package index holds different projects under two of these names (`traceai-vllm`,
`traceai-huggingface`): installed from there, `TRACEAI_VLLM_AUTO=1` does nothing. A distribution
is this project's when it declares what only this project declares: the `traceai.instrumentors`
entry point (and, for traceai-vllm, the `vllm.general_plugins` one). `fi-evals --version` prints it.
"""

from __future__ import annotations

from importlib import metadata

PACKAGES = ("fi-evals-core", "traceai-vllm", "traceai-huggingface")
# entry points only this project's distributions declare: (group, name)
_MARKS = {
    "fi-evals-core": ("console_scripts", "fi-evals"),
    "traceai-vllm": ("vllm.general_plugins", "traceai"),
    "traceai-huggingface": ("traceai.instrumentors", "huggingface"),
}


def installed() -> list[tuple[str, str | None, bool | None]]:
    """(name, version or None when not installed, whether it is this project's)."""
    out = []
    for name in PACKAGES:
        try:
            dist = metadata.distribution(name)
        except metadata.PackageNotFoundError:
            out.append((name, None, None))
            continue
        group, entry = _MARKS[name]
        ours = any(ep.group == group and ep.name == entry for ep in dist.entry_points)
        out.append((name, dist.version, ours))
    return out


def describe() -> str:
    lines = []
    for name, version, ours in installed():
        if version is None:
            lines.append(f"{name}: not installed")
        elif ours:
            lines.append(f"{name} {version}")
        else:
            lines.append(f"{name} {version}: NOT this project's package (a different project with the same name on "
                         "the package index; install this repository's wheels, see the README)")
    return "\n".join(lines)
