"""python -m supervisor: the slotctl client (python -m supervisor daemon runs slotd)."""

import sys


def main() -> None:
    if sys.argv[1:2] == ["daemon"]:
        from supervisor.daemon import main as daemon_main

        daemon_main(sys.argv[2:])
    else:
        from supervisor.cli import main as cli_main

        cli_main()


if __name__ == "__main__":
    main()
