"""Plain helpers the tests import; fixtures live in the conftest.py files, where pytest
finds them, and no test module imports a conftest."""
