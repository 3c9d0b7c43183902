"""The toy base loramix ships: its definition, its build, its faces and its judge.

Only the command line and tests import this package; general code reaches the toy base as a folder."""
