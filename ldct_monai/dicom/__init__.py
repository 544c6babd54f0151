"""The DICOM layer: every DICOM file of the package is read and written here.

``core`` (z and HU), ``classify`` (what a usable CT slice is, with the reasons of ``skipped.csv``), ``scan``
(header-only scan of a tree, for build-manifest), ``reader`` (one series in geometric order, one slice, the
one pixel-read path), ``writer`` (derived series), ``create`` (new series; the one Part-10 write).
"""
