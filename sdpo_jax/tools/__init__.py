"""Command-line tools (`python -m sdpo_jax.tools.<name>`)."""
