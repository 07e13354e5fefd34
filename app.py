"""The web chat, from a checkout of the repository: `python app.py [--host H] [--port P]`.

A launcher only: the chat lives in rag.web, so an installed package serves it too (`rag serve`).
"""

import sys

from rag.web import main

if __name__ == "__main__":
    sys.exit(main(prog="python app.py"))
