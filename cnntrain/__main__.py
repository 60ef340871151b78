"""`python -m cnntrain ...` is the same as `cnntrain ...`."""

from cnntrain.cli import main

main()
