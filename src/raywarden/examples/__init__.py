"""Small programs for trying raywarden out: they need no model weights (docs/serve.md uses serve_apps)."""
