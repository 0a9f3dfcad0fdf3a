"""`python -m ttc.cli` is `ttc`."""

from ttc.cli import main

main()
