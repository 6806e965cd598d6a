"""The provider contract suite (a package, so its conftest never shadows tests/conftest.py as `conftest`)."""
