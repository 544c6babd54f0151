"""ldct-monai: DICOM-native unpaired low-dose CT denoising built on MONAI."""

from __future__ import annotations

__version__ = "0.1.0"
