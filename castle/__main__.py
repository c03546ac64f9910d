"""python -m castle."""

from castle.entry import main

main()
