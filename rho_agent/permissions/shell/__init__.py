"""The bash checker: reads a command the way bash would and refuses what a profile forbids.

``lex`` splits a command line into words and operators, ``programs`` knows what common programs
do with their arguments (``git`` has its own module), and ``policy`` decides. It gives clear
refusals; the boundary itself is the operating system's confinement of the tool process.
"""
