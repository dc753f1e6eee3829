"""``rangekv bench``: benchmark programs that print figures (never timed assertions)."""
