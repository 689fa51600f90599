"""Shared test set-up: the same numerical configuration as the notebooks."""

import restrained

restrained.setup()
