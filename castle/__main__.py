"""python -m castle."""

from castle.cli import main

main()
