"""The local web app (``imagic-lora ui``): :mod:`.studio` does the work, :mod:`.app` draws the page."""
