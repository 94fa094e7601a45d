"""Training scripts behind `trl-esr <command>` and `examples/scripts/` (logic here, the examples import it)."""
