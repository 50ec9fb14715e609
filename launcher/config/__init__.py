"""The run configuration: schema, loading, overrides and error reporting."""
