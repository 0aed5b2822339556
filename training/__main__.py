"""`python -m training <command>`: the offline tool chain's command line."""

from training.cli import main

raise SystemExit(main())
