"""Run the imagic-lora command from a checkout: ``python cli.py --help``."""

from imagic_lora.cli import main

if __name__ == "__main__":
    main()
