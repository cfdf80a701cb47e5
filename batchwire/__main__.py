"""``python -m batchwire`` runs the ``batchwire`` command line."""

from batchwire.server.cli import main

if __name__ == "__main__":
    main()
