# Neither library is required: each is patched when (if) it is imported, so the dependency
# check of BaseInstrumentor has nothing to refuse.
_instruments: tuple[str, ...] = ()
