"""Try the node's results in a real viewer: Orthanc (DICOMweb plugin) + OHIF Viewer on loopback.

``python -m deploy.viewer`` (or ``make viewer``) analyses the sample studies with the bundled models,
uploads CT + SEG + SR + overlay series to a throw-away Orthanc and serves OHIF's built ``dist/`` with
a reverse proxy to Orthanc's DICOMweb root, so the browser talks to one origin. ``tests/viewer``
drives the same stack with headless Chromium. See ``docs/viewer.md``.
"""
