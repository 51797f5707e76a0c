"""The command line: one module per verb group, parsing only; each calls its stage's public entry."""
