"""``python -m daskseg``: the daskseg command."""

from daskseg.cli import console_main

console_main()
