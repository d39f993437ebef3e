"""Cross-cutting pieces every layer may use: atomic writes, content keys, user-input parsing,
devices, costs, output checks and the registries' machinery."""
