"""The config: a typed, validated frozen dataclass tree (schema), its keys' help, the
schema-free parsing machinery and the plugins a config names."""
