"""Policy decision point: Cedar policies, validated against the shipped schema, evaluated per request."""
