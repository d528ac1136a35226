"""`python -m aelab ...` (and `torchrun -m aelab ...`) is the `aelab` command."""
from .cli import main

main()
