"""`python -m kernels`: print which kernel is fastest at each measured size (see kernels.fastest)."""
from kernels.fastest import main

main()
