"""The `sona-store` command line: argparse code only, one module per group of commands.

Commands open the store through the facade and close what they open; heavy
imports (the store, APScheduler, matplotlib) happen inside the command that
needs them, so `--help` stays fast.
"""
