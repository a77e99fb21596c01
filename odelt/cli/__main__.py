"""`python -m odelt.cli ...` runs the odelt-export CLI."""

from odelt.cli import main

main()
