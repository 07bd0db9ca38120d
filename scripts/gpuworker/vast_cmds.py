import argparse


def register(sub: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
    pass
