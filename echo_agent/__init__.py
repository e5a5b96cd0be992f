"""The application: the ``echo-agent`` command line and the running node that wires the DICOM
server, the workers and the web app together.

It is the one package allowed to import all the others (the composition root): ``pacs_agent``
holds the services and must not know about the web app, so whatever starts both lives here.
"""
