"""One module per dashboard page; each exposes ``render(ctx)`` and lays out what others computed."""
