"""The one neutral package every layer may import (dicomnode, training, pipeline): small file and
database utilities with no knowledge of DICOM, models or the node."""
