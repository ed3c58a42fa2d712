"""`python -m winequality.cli`: the same command as `winequality`."""

from winequality.cli import main

main()
