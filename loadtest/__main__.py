"""``python -m batchwire.loadtest [options]`` runs ``batchwire loadtest``."""

from batchwire.loadtest.cli import main

if __name__ == "__main__":
    main()
