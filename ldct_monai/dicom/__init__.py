"""DICOM reading (to HU, in geometric order) and writing (new CT series, derived series)."""
