"""Shared pytest configuration: fixture modules every test folder may use."""

pytest_plugins = [
    "tests.fixtures.registry",
    "tests.fixtures.gha",
    "tests.fixtures.build",
    "tests.fixtures.docker",
]
