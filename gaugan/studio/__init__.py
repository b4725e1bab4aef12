"""GauGAN studio: paint a label map in the browser and watch the generator's photo appear.

The studio serves one loaded generator locally: :func:`gaugan.studio.app.create_app` builds
the web application (the API and the static page in ``static/``), :mod:`.service` holds the
model behind one device lock, :mod:`.inputs` checks what requests send, :mod:`.segment`
turns a photo into a label map, :mod:`.server` listens and serves, :mod:`.bench` times
requests through the application. ``gaugan studio`` (pipeline/cli/studio.py) is the command.
"""
