"""The component image: the Docker engine it is built and run on, its base images, its build.

One image carries every pipeline step, the CLI and the query service (the Dockerfile at the
repository root); ``twotower image build`` (``make image``) makes it here.
"""
