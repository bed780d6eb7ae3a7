"""``fashion-assets serve``: the command registered by ``fashion_assets.cli``."""

import argparse


def add_commands(commands: argparse._SubParsersAction) -> None:
    """Add this stage's sub-commands to the ``fashion-assets`` parser."""
