"""``python3 -S -m sandbank.agent [--socket PATH]``: start the agent."""

import sys

from sandbank.agent.server import main

if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
