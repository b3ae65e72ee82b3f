"""`python -m kernels`: print which kernel is fastest at each measured size, or write the
decision table (see kernels._decision_table)."""
from kernels._decision_table import main

main()
